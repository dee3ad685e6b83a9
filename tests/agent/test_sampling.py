"""Sampling decisions (pure): strategies in order, quotas, caps, min gap, near-duplicates, masks, drift."""
import io
import os

import numpy as np
import pytest

from edgesight.agent import sampling
from edgesight.agent.samples import jpeg_within
from edgesight.contract.policy import SamplingPolicy, parse_policy
from edgesight.errors import ConfigError

from support import EXAMPLE, ROOT

DIGITS = os.path.join(EXAMPLE, "images", "val")


def policy(**kw):
    kw.setdefault("max_per_minute", None)
    kw.setdefault("min_gap", 0)
    return SamplingPolicy(**kw)


def test_quota_minute_hour_day_windows():
    q = sampling.Quota(per_minute=2, per_hour=3, per_day=4)
    for t in (0.0, 1.0):
        assert q.room(t)
        q.record(t)
    assert not q.room(59.9)  # two in the last minute
    assert q.room(60.0)  # the first left the minute window
    q.record(60.0)
    assert not q.room(200.0)  # three in the last hour
    assert q.room(3600.5)  # 0 left the hour; 1 and 60 are in it
    q.record(3600.5)
    assert not q.room(3700.0) and not q.room(80000.0)  # four in the last day
    assert q.room(86401.0)  # 0 and 1 left the day
    assert sampling.Quota().room(0.0)  # no limits
    assert not sampling.Quota(per_minute=0).room(0.0)


def test_triggers():
    assert sampling.low_confidence(0.5, 0.8) and not sampling.low_confidence(0.8, 0.8)
    assert sampling.near_threshold(0.83, 0.8, 0.05) and sampling.near_threshold(0.77, 0.8, 0.05)
    assert not sampling.near_threshold(0.9, 0.8, 0.05)
    assert sampling.small_margin(0.5, 0.45, 0.1) and not sampling.small_margin(0.9, 0.05, 0.1)
    assert sampling.random_baseline(True, 0.004, 0.01) and not sampling.random_baseline(True, 0.5, 0.01)
    assert not sampling.random_baseline(False, 0.0, 0.01)  # only confident frames
    assert sampling.class_target("cat", ["cat"], 99, None)
    assert sampling.class_target("dog", [], 2, 5) and not sampling.class_target("dog", [], 5, 5)


def test_first_strategy_that_fires_with_quota_left_names_the_reason():
    s = sampling.Sampler(policy(strategies=[{"type": "low_confidence", "per_minute": 1},
                                            {"type": "near_threshold", "band": 0.15}]))
    d = s.decide("a", 0.6, 0.1, 0.8, False, now=0.0)
    assert d.reason == "low_confidence"
    s.commit("cam", d.reason, "a", None, 0.0)
    d = s.decide("a", 0.7, 0.1, 0.8, False, now=1.0)  # low_confidence's quota is spent: the next one takes it
    assert d.reason == "near_threshold"
    assert s.decide("a", 0.2, 0.1, 0.8, False, now=2.0).skipped == "quota"  # fires, no quota, nothing else fires
    assert s.decide("a", 0.99, 0.0, 0.8, True, now=3.0).reason is None  # nothing fires: not a skip
    assert s.decide("a", 0.99, 0.0, 0.8, True, now=3.0).skipped is None


def test_margin_random_and_class_target_strategies():
    s = sampling.Sampler(policy(strategies=[{"type": "margin", "max_margin": 0.2},
                                            {"type": "random", "rate": 0.1},
                                            {"type": "class_target", "classes": ["rare"], "name": "rare"},
                                            {"type": "class_target", "min_per_day": 2, "name": "fill"}]))
    assert s.decide("a", 0.9, 0.8, 0.5, True, 0.0).reason == "margin"
    assert s.decide("a", 0.9, 0.0, 0.5, True, 0.0, u=0.05).reason == "random"
    assert s.decide("rare", 0.99, 0.0, 0.5, True, 0.0, u=0.5).reason == "rare"
    assert s.decide("b", 0.99, 0.0, 0.5, True, 0.0, u=0.5).reason == "fill"  # no b sample in 24 h
    s.commit("c", "fill", "b", None, 0.0)
    s.commit("c", "fill", "b", None, 1.0)
    assert s.decide("b", 0.99, 0.0, 0.5, True, 2.0, u=0.5).reason is None  # b has its 2 for today
    assert s.decide("b", 0.99, 0.0, 0.5, True, 86401.0, u=0.5).reason == "fill"  # and not tomorrow
    assert s.taken == {"fill": 2}


def test_quotas_cap_and_min_gap_hold_under_a_burst():
    s = sampling.Sampler(policy(strategies=[{"type": "low_confidence", "per_minute": 5, "per_hour": 8}],
                                max_per_minute=4, min_gap=2.0))
    taken = []
    for i in range(3000):  # 100 frames/s for 30 s, then 100 frames/s at minute 2, every one uncertain
        now = i * 0.01 if i < 3000 // 2 else 120 + (i - 1500) * 0.01
        d = s.decide("a", 0.1, 0.05, 0.8, False, now)
        if d.reason:
            s.commit("cam", d.reason, "a", None, now)
            taken.append(now)
        elif d.skipped:
            s.skip(d.skipped)
    gaps = np.diff(taken)
    assert len(taken) == 8  # 4 (device cap per minute) in each burst, the hour quota (8) not exceeded
    assert gaps.min() >= 2.0
    assert s.skipped["min_gap"] > 500 and s.skipped["cap"] > 800


def test_disabled_policy_takes_nothing():
    s = sampling.Sampler(policy(enabled=False))
    assert s.decide("a", 0.0, 0.0, 0.8, False, 0.0).reason is None


def _img(name):
    from PIL import Image

    return np.asarray(Image.open(os.path.join(DIGITS, name)).convert("RGB"))


def _first_images(n):
    names = []
    for root, _, files in sorted(os.walk(DIGITS)):
        names += [os.path.relpath(os.path.join(root, f), DIGITS) for f in sorted(files)][:2]
    return names[:n]


def test_phash_identical_recompressed_and_different_frames():
    from PIL import Image

    a = np.kron(_img(_first_images(1)[0]), np.ones((8, 8, 1), np.uint8))  # 256x256 frame
    assert sampling.hamming(sampling.phash(a), sampling.phash(a.copy())) == 0
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=60)
    recompressed = np.asarray(Image.open(buf))
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    brighter = np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8)
    for near in (recompressed, noisy, brighter):
        assert sampling.hamming(sampling.phash(a), sampling.phash(near)) <= 4
    distances = []
    for name in _first_images(20)[1:]:
        b = np.kron(_img(name), np.ones((8, 8, 1), np.uint8))
        if not np.array_equal(a, b):
            distances.append(sampling.hamming(sampling.phash(a), sampling.phash(b)))
    assert min(distances) > 4, distances


def test_near_duplicates_of_the_same_camera_are_skipped():
    s = sampling.Sampler(policy(dedup={"max_distance": 4, "window": 2, "ttl": 100}))
    h = 0b1011
    s.commit("cam1", "low_confidence", "a", h, 0.0)
    assert s.is_duplicate("cam1", h ^ 0b1, 1.0)  # one bit away
    assert not s.is_duplicate("cam2", h, 1.0)  # another camera
    assert not s.is_duplicate("cam1", h ^ 0xFFFF, 1.0)  # far away
    assert not s.is_duplicate("cam1", h, 100.0)  # forgotten after ttl
    far = [0xFFFFF, 0xFFFFF << 20, 0xFFFFF << 40]
    for i, x in enumerate(far):
        s.commit("cam1", "low_confidence", "a", x, 101.0 + i)
    assert not s.is_duplicate("cam1", far[0], 104.0)  # pushed out of the window of 2
    assert s.is_duplicate("cam1", far[2], 104.0)
    off = sampling.Sampler(policy(dedup={"enabled": False}))
    off.commit("cam1", "low_confidence", "a", h, 0.0)
    assert not off.is_duplicate("cam1", h, 0.0)


def test_polygon_mask_and_apply_mask_pixels():
    m = sampling.polygon_mask(6, 8, [[(2, 1), (6, 1), (6, 4), (2, 4)]])
    expect = np.zeros((6, 8), bool)
    expect[1:4, 2:6] = True
    assert np.array_equal(m, expect)
    tri = sampling.polygon_mask(10, 10, [[(0, 0), (10, 0), (0, 10)]])
    assert tri[0, 0] and tri[4, 4] and not tri[5, 5] and not tri[9, 9] and tri.sum() == 45
    rel = sampling.scale_polygons([[(0.5, 0), (1, 0), (1, 1), (0.5, 1)]], True, 4, 10)
    right = sampling.polygon_mask(4, 10, rel)
    assert right[:, 5:].all() and not right[:, :5].any()
    img = np.full((6, 8, 3), 200, np.uint8)
    out = sampling.apply_mask(img, m)
    assert (out[m] == 0).all() and (out[~m] == 200).all() and (img == 200).all()  # a copy; the frame unchanged
    assert sampling.apply_mask(img, None) is img


def test_drift_histogram_per_class():
    d = {}
    for label, score in [("a", 0.05), ("a", 0.95), ("a", 1.0), ("b", 0.5)]:
        sampling.drift_add(d, label, score)
    assert d["a"] == {"count": 3, "hist": [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]}
    assert d["b"]["hist"][5] == 1 and sum(d["b"]["hist"]) == d["b"]["count"] == 1


@pytest.mark.parametrize("payload, field", [
    (b"not json", None),
    (b"[1, 2]", None),
    (b'{"v": 2}', "v"),
    (b'{"strategies": [{"type": "psychic"}]}', "strategies[0]"),
    (b'{"strategies": [{"type": "margin", "max_margin": "wide"}]}', "strategies[0].max_margin"),
    (b'{"min_gap": -1}', "min_gap"),
    (b'{"mystery": 1}', "mystery"),
    (b'{"strategies": [{"type": "random"}, {"type": "random"}]}', "strategies"),
    (b'{"strategies": []}', "strategies"),
    (b"{" + b" " * (70 * 1024) + b"}", None),
    (b"[" * 1000, None),  # once a RecursionError that killed the agent at every start
    (b'{"min_gap": 1e999}', "min_gap"),  # infinity
    (b'{"min_gap": NaN}', None),  # not JSON
    (b'{"v": true}', "v"),  # True == 1 in Python: versions must be integers
    (b'{"v": 1.0}', "v"),
    (b'{"dedup": ' * 20 + b"{}" + b"}" * 20, None),  # deeper than any policy
    (b'{"strategies": [{"type": "class_target", "classes": ["' + b"x" * 300 + b'"]}]}',
     "strategies[0].classes[0]"),
    (b"\xff\xfe{}", None),
])
def test_bad_policy_payloads_are_refused_with_the_field(payload, field):
    with pytest.raises(ConfigError) as exc:
        parse_policy(payload)
    assert exc.value.field == field
    assert "config/sampling" in str(exc.value)


def test_policy_payload_replaces_the_section_with_defaults_for_missing_keys():
    p = parse_policy(b'{"v": 1, "min_gap": 0.5, "strategies": [{"type": "random", "rate": 0.2}]}')
    assert p.min_gap == 0.5 and p.strategies[0].rate == 0.2 and p.max_per_minute == 6


def test_the_example_agent_config_carries_a_valid_sampling_policy():
    from edgesight.agent.config import load_config

    cfg = load_config(os.path.join(ROOT, "examples", "agent.yaml"))
    assert [s.type for s in cfg.samples.strategies] == ["low_confidence", "margin", "random"]


# -- JPEG samples under the byte budget ---------------------------------------------------------------------------------------------------
def test_jpeg_fits_the_budget():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)  # incompressible: forces shrinking
    jpeg, w, h = jpeg_within(noise, "bgr", 90 * 1024)
    assert len(jpeg) <= 90 * 1024 and jpeg[:2] == b"\xff\xd8" and max(w, h) <= 1280
    small, w2, h2 = jpeg_within(np.zeros((48, 48, 3), np.uint8), "rgb", 90 * 1024)
    assert (w2, h2) == (48, 48)
