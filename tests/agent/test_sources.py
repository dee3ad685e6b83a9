"""Capture threads (latest-frame slot), the preprocessing stage, worker failures, ready-made camera pipelines."""
import numpy as np
import pytest


# -- worker failures end the agent loudly ------------------------------------------------------------------------
def test_capture_thread_failure_is_reported_and_stops_the_agent():
    import time

    from edgesight.agent.service import Agent
    from edgesight.agent.capture import Capture
    from edgesight.agent.sources import Source
    from edgesight.errors import InferenceError

    class Broken(Source):
        def open(self):
            pass

        def read(self):
            raise RuntimeError("driver crashed")

    cap = Capture("cam", Broken(), fps=100).start()
    end = time.time() + 5
    while cap.failed is None and time.time() < end:
        time.sleep(0.01)
    assert cap.state == "failed" and "driver crashed" in cap.last_error

    class Worker(object):
        failed = None

    with pytest.raises(InferenceError, match="camera cam thread failed: RuntimeError: driver crashed"):
        Agent._check_threads([cap], Worker(), Worker(), Worker())


def test_capture_latest_frame_slot_drops_stale_frames():
    import time

    from edgesight.agent.capture import Capture
    from edgesight.agent.sources import Frame, Source

    class Counter(Source):
        n = 0

        def open(self):
            pass

        def read(self):
            self.n += 1
            return Frame(np.zeros((2, 2, 3), np.uint8), "rgb", time.time(), self.n)

    cap = Capture("cam", Counter(), fps=200).start()
    time.sleep(0.3)  # nobody takes frames: only the latest is kept
    frame = cap.take(timeout=1)
    cap.stop()
    assert frame is not None and frame.seq >= cap.captured - 1
    assert cap.dropped >= cap.captured - 2 > 10


class Numbered(object):
    """A finite source of numbered 2x2 frames (value = seq) for the capture and preprocessing stages."""

    def __new__(cls, count, value_offset=0):
        import time

        from edgesight.agent.sources import Frame, Source

        class _Source(Source):
            n = 0

            def open(self):
                pass

            def read(self):
                if self.n >= count:
                    return None
                self.n += 1
                return Frame(np.full((2, 2, 3), self.n + value_offset, np.uint8), "rgb", time.time(), self.n)

        return _Source()


def wait_until(condition, timeout=5.0):
    import time

    end = time.time() + timeout
    while not condition() and time.time() < end:
        time.sleep(0.005)
    assert condition()


def test_prefetch_prepares_the_latest_frame_only_after_the_last_one_was_taken():
    import time

    from edgesight.agent.prefetch import Prefetch
    from edgesight.agent.capture import Capture

    prepared = []

    def prepare(camera, frame):
        prepared.append(frame.seq)
        return {"": frame.image[None].astype(np.float32)}, []

    cap = Capture("cam", Numbered(100000), fps=500).start()
    pre = Prefetch([cap], prepare).start()
    try:
        first = pre.take(timeout=2)
        assert first is not None and first.camera == "cam" and first.batches[""].shape == (1, 2, 2, 3)
        assert float(first.batches[""][0, 0, 0, 0]) == first.frame.seq % 256 and first.preprocess_ms >= 0
        wait_until(lambda: len(prepared) == 2)
        time.sleep(0.1)  # the camera goes on (~50 frames); the stage holds one prepared frame and waits
        assert len(prepared) == 2  # nothing prepared while the slot is full
        waiting = pre.take(timeout=1)
        newest = cap.captured  # the slot is empty now: the stage takes the camera's latest frame at once
        assert waiting is not None and waiting.frame.seq <= first.frame.seq + 2  # prepared when the first was taken
        wait_until(lambda: len(prepared) == 3)
        time.sleep(0.1)
        assert len(prepared) == 3
        fresh = pre.take(timeout=1)
        assert fresh is not None and fresh.frame.seq <= newest + 2  # taken when the slot emptied, not 0.1 s later
        assert fresh.frame.seq > waiting.frame.seq + 20  # the frames in between were never prepared...
        assert cap.dropped > 40  # ...but dropped and counted by the camera, not queued
    finally:
        pre.stop()
        cap.stop()


@pytest.mark.parametrize("cameras", [1, 3])
def test_an_idle_preprocessing_stage_sleeps_until_a_camera_has_a_frame(monkeypatch, cameras):
    """It polled every camera every 10-50 ms: 20 to 300 wake-ups a second with nothing to do. Now the captures wake
    it; the idle poll is made a minute long here, so frames that arrive are prepared only if they wake it."""
    import time

    from edgesight.agent import prefetch as prefetch_mod
    from edgesight.agent.prefetch import Prefetch
    from edgesight.agent.capture import Capture

    monkeypatch.setattr(prefetch_mod, "IDLE_POLL", 60.0)
    caps = [Capture("c%d" % i, Numbered(100000), fps=4).start() for i in range(cameras)]
    pre = Prefetch(caps, lambda camera, f: ({"": f.image[None]}, []))
    looks = []
    real = pre._prepare_next
    pre._prepare_next = lambda: looks.append(1) or real()
    pre.start()
    try:
        got, end = [], time.time() + 2.0
        while time.time() < end:
            item = pre.take(timeout=0.1)
            if item is not None:
                got.append(item.camera)
        assert len(got) >= 4 * cameras, got  # 4 fps per camera for 2 s: every frame was prepared
        assert len(looks) <= 3 * len(got) + 4, (len(looks), len(got))
    finally:
        pre.stop()
        for cap in caps:
            cap.stop()


def test_a_poke_wakes_a_waiting_take():
    """What an MQTT message does to the main loop, which waits on the preprocessing stage's slot."""
    import threading
    import time

    from edgesight.agent.slot import SlotWorker

    worker, got = SlotWorker("idle"), []
    waiter = threading.Thread(target=lambda: got.append(worker.take(timeout=30.0)))
    waiter.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    worker.poke()
    waiter.join(10)
    assert got == [None] and time.monotonic() - t0 < 10


def test_prefetch_round_robin_and_drained_at_the_end_of_every_camera():
    import threading
    import time

    from edgesight.agent.prefetch import Prefetch
    from edgesight.agent.sources import Frame

    class Queued(object):
        """A camera whose frames are all waiting (no drops), to check the order deterministically."""

        def __init__(self, name, seqs):
            self.name, self.frames, self.lock, self.taken = name, list(seqs), threading.Lock(), 0

        def take(self, timeout):
            with self.lock:
                if self.frames:
                    self.taken += 1
                    seq = self.frames.pop(0)
                    return Frame(np.full((2, 2, 3), seq, np.uint8), "rgb", time.time(), seq)
            time.sleep(timeout)
            return None

        ended = property(lambda self: True)
        ready = property(lambda self: bool(self.frames))

    caps = [Queued("a", [1, 2, 3]), Queued("b", [11, 12, 13, 14, 15])]
    pre = Prefetch(caps, lambda camera, f: ({"": f.image[None]}, [])).start()
    try:
        end, got = time.time() + 5, []
        while not pre.drained() and time.time() < end:
            item = pre.take(timeout=0.05)
            if item is not None:
                got.append((item.camera, int(item.batches[""][0, 0, 0, 0])))
        assert pre.drained() and pre.take(timeout=0.01) is None
        assert got == [("a", 1), ("b", 11), ("a", 2), ("b", 12), ("a", 3), ("b", 13), ("b", 14), ("b", 15)]
    finally:
        pre.stop()


def test_the_agent_runs_opencv_kernels_in_the_calling_thread():
    """OpenCV's own pool spin-waits after every resize: the agent (process-wide, so not the library) turns it off."""
    cv2 = pytest.importorskip("cv2")
    from edgesight.agent.prefetch import opencv_in_calling_thread

    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        assert opencv_in_calling_thread() is True and cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_prefetch_failure_is_reported_and_stops_the_agent():
    from edgesight.agent.prefetch import Prefetch
    from edgesight.agent.service import Agent
    from edgesight.agent.capture import Capture
    from edgesight.errors import InferenceError

    def prepare(camera, frame):
        raise ValueError("frame has 7 channels")

    cap = Capture("cam", Numbered(10), fps=100).start()
    pre = Prefetch([cap], prepare).start()
    try:
        assert pre.take(timeout=2) is None  # returns at once when the stage failed
        assert isinstance(pre.failed, ValueError)

        class Worker(object):
            failed = None

        with pytest.raises(InferenceError, match="preprocessing thread failed: ValueError: frame has 7 channels"):
            Agent._check_threads([cap], Worker(), pre, Worker())
    finally:
        pre.stop()
        cap.stop()


def test_ready_made_camera_pipelines():
    from edgesight.agent.sources import jetson_csi_pipeline, pi_libcamera_pipeline

    csi = jetson_csi_pipeline(sensor_id=1, width=1920, height=1080, fps=29.97)
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ") and "width=1920, height=1080, framerate=30/1" in csi
    assert csi.endswith("appsink drop=true max-buffers=1 sync=false")  # never queue stale frames
    pi = pi_libcamera_pipeline(640, 480, 15)
    assert pi.startswith("libcamerasrc ") and "format=BGR" in pi and "framerate=15/1" in pi


def test_a_replay_waits_for_a_slow_pipeline_instead_of_dropping_frames(tmp_path):
    """A folder (or video file) is a recording: on a slow device (or under emulation) every frame is still processed,
    in order; only live cameras drop stale frames."""
    import time

    from PIL import Image

    from edgesight.agent.capture import Capture
    from edgesight.agent.sources import FolderSource

    for i in range(8):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(str(tmp_path / ("f%02d.png" % i)))
    cap = Capture("rec", FolderSource(str(tmp_path), loop=False), fps=500).start()
    seqs = []
    try:
        for _ in range(8):
            time.sleep(0.05)  # a pipeline 25x slower than the source
            frame = cap.take(timeout=5)
            assert frame is not None
            seqs.append(frame.seq)
    finally:
        cap.stop()
    assert seqs == list(range(1, 9)) and cap.dropped == 0 and cap.captured == 8


# -- decode on demand ----------------------------------------------------------------------------------------------
def _numbered_video(path, n=900, size=(240, 320)):
    """An MJPG file whose frame i is a flat grey of level i % 200 (so a decoded frame tells which one it is)."""
    cv2 = pytest.importorskip("cv2")
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (size[1], size[0]))
    assert w.isOpened()
    for i in range(n):
        w.write(np.full(size + (3,), 20 + i % 200, np.uint8))
    w.release()
    return str(path)


def test_a_folder_is_read_and_decoded_by_the_thread_that_takes_the_frame(tmp_path, monkeypatch):
    """The capture thread of a folder only picks the next file: the taking thread (the preprocessing stage) reads
    and decodes it, so no decoded image crosses threads; frames keep their order, sequence and capture time."""
    import threading
    import time

    from PIL import Image

    from edgesight.agent import sources
    from edgesight.agent.capture import Capture
    from edgesight.agent.sources import FolderSource

    for i in range(6):
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(str(tmp_path / ("f%02d.png" % i)))
    decoders = []
    real = sources.load_image

    def load_image(path):
        decoders.append(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(sources, "load_image", load_image)
    cap = Capture("rec", FolderSource(str(tmp_path), loop=False), fps=500).start()
    frames = []
    try:
        while len(frames) < 6:
            frame = cap.take(timeout=5)
            assert frame is not None and frame.decode_ms > 0 and frame.captured <= time.time()
            frames.append(frame)
    finally:
        cap.stop()
    assert decoders == [threading.current_thread().name] * 6
    assert [f.seq for f in frames] == list(range(1, 7))
    assert [int(f.image[0, 0, 0]) for f in frames] == [10 * i for i in range(6)]


def test_a_folder_skips_an_unreadable_image_and_reconnects_when_none_is_readable(tmp_path):
    import time

    from PIL import Image

    from edgesight.agent.capture import Capture
    from edgesight.agent.sources import FolderSource

    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), 50 * i, np.uint8)).save(str(tmp_path / ("f%02d.png" % i)))
    (tmp_path / "f01.png").write_bytes(b"not an image")
    cap = Capture("rec", FolderSource(str(tmp_path), loop=False), fps=500).start()
    frames = []
    try:
        end = time.time() + 10
        while not (cap.ended and not cap.ready) and time.time() < end:
            frame = cap.take(timeout=0.1)  # None for the unreadable one
            if frame is not None:
                frames.append(frame)
    finally:
        cap.stop()
    assert [(f.seq, int(f.image[0, 0, 0])) for f in frames] == [(1, 0), (3, 100)]
    assert cap.dropped == 1 and cap.taken == 2  # the unreadable one: dropped, not handed on

    for i in range(3):
        (tmp_path / ("f%02d.png" % i)).write_bytes(b"garbage")
    cap = Capture("rec", FolderSource(str(tmp_path), loop=True), fps=500, reconnect_min=0.05,
                  reconnect_max=0.2).start()
    try:
        end = time.time() + 10
        while cap.reconnects < 2 and time.time() < end:  # reopening fails too: it backs off, no busy loop
            assert cap.take(timeout=0.05) is None
        assert cap.state == "reconnecting" and "no readable image in %s" % tmp_path in cap.last_error
        Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(str(tmp_path / "f03.png"))
        frame = None
        while frame is None and time.time() < end:  # an image that reads again: back online
            frame = cap.take(timeout=0.05)
    finally:
        cap.stop()
    assert cap.reconnects >= 2 and frame is not None and int(frame.image[0, 0, 0]) == 7


def test_a_video_file_is_replayed_whole_and_in_order_however_fast_it_is_taken(tmp_path):
    """A video file grabs in the capture thread and decodes in the taking one; the next grab waits for that decode,
    so at the maximum rate no frame is skipped or decoded as another's."""
    from edgesight.agent.capture import Capture
    from edgesight.agent.sources import OpenCVSource

    src = OpenCVSource(_numbered_video(tmp_path / "v.avi", n=120), "video", loop=False)
    assert src.replay
    cap = Capture("rec", src, fps=10000).start()
    taken = []
    try:
        while True:
            f = cap.take(timeout=5)
            if f is None:
                break
            taken.append(f)
    finally:
        cap.stop()
    assert [f.seq for f in taken] == list(range(1, 121)) and cap.dropped == 0 and cap.ended
    for f in taken:
        assert abs(float(f.image.mean()) - (20 + (f.seq - 1) % 200)) < 3, f.seq


def test_a_live_source_decodes_only_the_frames_the_pipeline_takes(tmp_path):
    """A live OpenCV source (here a real VideoCapture on a file, read as a stream: no waiting) grabs at its rate in
    the capture thread and decodes only the frame that is taken; that frame is the latest one grabbed, with its own
    sequence number and capture time."""
    import time

    from edgesight.agent.capture import Capture
    from edgesight.agent.sources import OpenCVSource

    src = OpenCVSource(_numbered_video(tmp_path / "v.avi"), "url")
    assert not src.replay
    cap = Capture("cam", src, fps=400).start()
    try:
        taken = []
        end = time.time() + 10
        while len(taken) < 12 and time.time() < end:
            time.sleep(0.03)  # a slow pipeline: the camera runs ahead
            f = cap.take(timeout=1.0)
            if f is not None:
                taken.append(f)
    finally:
        cap.stop()
    assert len(taken) == 12
    assert src.decoded == len(taken)  # nothing decoded that was not taken
    assert src.grabbed >= 3 * src.decoded, (src.grabbed, src.decoded)  # most frames were never decoded
    assert cap.dropped >= src.grabbed - src.decoded - 1
    seqs = [f.seq for f in taken]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for f in taken:  # the pixels are the frame its seq names (seq 1 is frame 0)
        level = 20 + (f.seq - 1) % 200
        assert abs(float(f.image.mean()) - level) < 3, (f.seq, f.image.mean(), level)
        assert f.color == "bgr" and f.decode_ms > 0


def test_frames_are_due_on_a_fixed_schedule_and_a_late_source_does_not_burst():
    from edgesight.agent.capture import next_due

    period = 1.0 / 30
    due, now = 100.0, 100.0
    # a wake-up 3 ms late every frame (a busy interpreter) does not move the schedule: 30 frames a second
    for _ in range(30):
        now = due + 0.003
        due = next_due(due, now, period)
    assert due == pytest.approx(100.0 + 30 * period)
    # the schedule is kept when a frame came late by less than a period: the next one is due sooner
    assert next_due(200.0, 200.0 + 0.9 * period, period) == pytest.approx(200.0 + period)
    # more than a period behind (a replay that waited for a slow pipeline): a new schedule from now, no burst
    assert next_due(300.0, 300.0 + 5 * period, period) == pytest.approx(300.0 + 5 * period)
