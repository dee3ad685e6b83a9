"""The TensorRT backend, engine cache and calibrator, checked against a fake tensorrt module and a fake CUDA adapter
that record calls (TensorRT cannot run here); a real end-to-end run is behind the `device` marker."""
import os

import numpy as np
import pytest

from edgesight.errors import ModelFileError
from edgesight.runtimes import engine_cache
from edgesight.runtimes.registry import create_runtime
from edgesight.runtimes.tensorrt_backend import TensorRTRunner
from edgesight.runtimes.tensorrt_build import ExtendTimeout, make_entropy_calibrator

from support import fake_tensorrt
from support import EXAMPLE, EXAMPLE_PACKAGE


@pytest.fixture
def engine_file(tmp_path):
    p = tmp_path / "m.engine"
    p.write_bytes(b"ENGINE-BYTES")
    return str(p)


def runner(monkeypatch, engine_file, **kw):
    trt = fake_tensorrt.install(monkeypatch, **kw)
    cuda = fake_tensorrt.FakeCuda(trt)
    return trt, cuda, TensorRTRunner(engine_file, cuda=cuda)


def expected(batch):
    return batch.reshape(len(batch), -1).mean(axis=1)[:, None] + np.arange(10, dtype=np.float32)[None, :]


@pytest.mark.parametrize("tensor_api,execute", [(True, "execute_async_v3"), (False, "execute_async_v2")])
def test_contract_with_either_api(monkeypatch, engine_file, tensor_api, execute):
    trt, cuda, rt = runner(monkeypatch, engine_file, tensor_api=tensor_api)
    with rt:
        assert rt.api == ("tensor" if tensor_api else "bindings")
        assert [t.name for t in rt.inputs] == ["image"] and rt.inputs[0].shape == (None, 3, 32, 32)
        assert rt.outputs[0].shape == (None, 10) and rt.inputs[0].layout == "nchw"
        batch = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
        out = rt.infer(batch)
        np.testing.assert_allclose(out["logits"], expected(batch), rtol=1e-5)
        single = np.concatenate([rt.infer(batch[i:i + 1])["logits"] for i in range(5)])
        np.testing.assert_allclose(single, out["logits"], rtol=1e-5)  # batch == single
    calls = [c[0] for c in trt.calls]
    assert execute in calls and ({"execute_async_v3", "execute_async_v2"} - {execute}).isdisjoint(calls)
    if tensor_api:  # every IO tensor gets an address before each execute
        addressed = {c[1] for c in trt.calls if c[0] == "set_tensor_address"}
        assert addressed == {"image", "logits"}
        assert ("set_input_shape", "image", (5, 3, 32, 32)) in trt.calls
    else:
        assert ("set_binding_shape", 0, (5, 3, 32, 32)) in trt.calls
    assert ("execute_async_v3", 42) in trt.calls or ("execute_async_v2", 2, 42) in trt.calls  # the stream handle
    frees = [c for c in cuda.calls if c[0] == "free"]
    mallocs = [c for c in cuda.calls if c[0] == "malloc"]
    assert len(frees) == len(mallocs) and ("destroy_stream",) in cuda.calls  # close() frees everything


def test_buffers_are_reused_and_grown_only_when_needed(monkeypatch, engine_file):
    trt, cuda, rt = runner(monkeypatch, engine_file)
    with rt:
        x = np.zeros((2, 3, 32, 32), np.float32)
        rt.infer(x)
        rt.infer(x)
        rt.infer(x[:1])
        assert sum(1 for c in cuda.calls if c[0] == "malloc") == 2  # one device buffer per tensor
        assert cuda.pinned_count == 2  # pinned host buffers, reused
        rt.infer(np.zeros((4, 3, 32, 32), np.float32))
        assert sum(1 for c in cuda.calls if c[0] == "malloc") == 4  # grown for the larger batch


def test_batches_above_the_profile_are_split(monkeypatch, engine_file):
    trt, cuda, rt = runner(monkeypatch, engine_file)
    with rt:
        batch = np.random.default_rng(1).standard_normal((19, 3, 32, 32)).astype(np.float32)
        out = rt.infer(batch)["logits"]
    np.testing.assert_allclose(out, expected(batch), rtol=1e-5)
    shapes = [c[2][0] for c in trt.calls if c[0] == "set_input_shape"]
    assert shapes == [8, 8, 3]  # the fake engine's profile allows batches up to 8


def test_engine_that_does_not_deserialize_quotes_tensorrt(monkeypatch, engine_file):
    trt, cuda, rt = runner(monkeypatch, engine_file, deserialize_ok=False)
    with pytest.raises(ModelFileError, match="version tag mismatch") as err:
        rt.load()
    assert err.value.file == engine_file


def test_registry_creates_the_tensorrt_runner(engine_file):
    rt = create_runtime("tensorrt", engine_file, config={"cuda": "pycuda"})
    assert isinstance(rt, TensorRTRunner) and rt.config.cuda == "pycuda"


# -- engine cache ---------------------------------------------------------------------------------------------
HERE_DEVICE = {"tensorrt": "10.3.0", "device": "Orin", "compute": "8.7"}


def fake_builder(calls):
    def build(onnx_path, engine_path, sample_shape, timing_cache=None, trt=None):
        calls.append((onnx_path, os.path.basename(engine_path), tuple(sample_shape), os.path.basename(timing_cache)))
        with open(engine_path, "wb") as f:
            f.write(b"BUILT")
        return dict(HERE_DEVICE)
    return build


def test_cache_key_changes_with_tensorrt_version_and_gpu():
    base = engine_cache.EngineKey("ab" * 32, "10.3.0", "Orin", "8.7")
    assert base.filename == "abababababababab-trt10.3.0-orin-sm87.engine"
    assert base._replace(tensorrt="8.6.2").filename != base.filename
    assert base._replace(device="Xavier", compute="7.2").filename != base.filename
    assert base._replace(onnx_sha256="cd" * 32).filename != base.filename


def test_builds_once_then_uses_the_cache(monkeypatch, tmp_path):
    trt = fake_tensorrt.install(monkeypatch)
    calls = []
    kw = dict(trt=trt, builder=fake_builder(calls), here=HERE_DEVICE)
    first = engine_cache.engine_for("q.onnx", "ab" * 32, str(tmp_path), (3, 32, 32), **kw)
    second = engine_cache.engine_for("q.onnx", "ab" * 32, str(tmp_path), (3, 32, 32), **kw)
    assert first == second and len(calls) == 1
    assert calls[0][1:] == ("abababababababab-trt10.3.0-orin-sm87.engine", (3, 32, 32), "timing-trt10.3.0-sm87.cache")


def test_cached_engine_that_does_not_deserialize_is_rebuilt(monkeypatch, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, deserialize_ok=lambda data: data != b"STALE")
    key = engine_cache.EngineKey("ab" * 32, "10.3.0", "Orin", "8.7")
    (tmp_path / key.filename).write_bytes(b"STALE")
    calls = []
    path = engine_cache.engine_for("q.onnx", "ab" * 32, str(tmp_path), (3, 32, 32), trt=trt,
                                   builder=fake_builder(calls), here=HERE_DEVICE)
    assert len(calls) == 1 and open(path, "rb").read() == b"BUILT"


def test_shipped_engine_used_only_when_built_for_matches(monkeypatch, tmp_path):
    trt = fake_tensorrt.install(monkeypatch)
    shipped = tmp_path / "model.int8.engine"
    shipped.write_bytes(b"SHIPPED")
    calls = []
    kw = dict(trt=trt, builder=fake_builder(calls), here=HERE_DEVICE)
    same = engine_cache.engine_for("q.onnx", "ab" * 32, str(tmp_path / "c"), (3, 32, 32),
                                   shipped=(str(shipped), dict(HERE_DEVICE)), **kw)
    assert same == str(shipped) and calls == []
    other = engine_cache.engine_for("q.onnx", "ab" * 32, str(tmp_path / "c"), (3, 32, 32),
                                    shipped=(str(shipped), dict(HERE_DEVICE, tensorrt="8.6.2")), **kw)
    assert other != str(shipped) and len(calls) == 1


def test_shipped_engine_that_does_not_deserialize_is_rebuilt(monkeypatch, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, deserialize_ok=lambda data: data != b"SHIPPED")
    shipped = tmp_path / "model.int8.engine"
    shipped.write_bytes(b"SHIPPED")
    calls = []
    path = engine_cache.engine_for("q.onnx", "ab" * 32, str(tmp_path / "c"), (3, 32, 32),
                                   shipped=(str(shipped), dict(HERE_DEVICE)), trt=trt, builder=fake_builder(calls),
                                   here=HERE_DEVICE)
    assert path != str(shipped) and len(calls) == 1


def test_build_extends_the_systemd_start_timeout(monkeypatch, tmp_path):
    import time

    trt = fake_tensorrt.install(monkeypatch)
    sent = []

    def slow_builder(onnx_path, engine_path, sample_shape, timing_cache=None, trt=None):
        time.sleep(0.35)
        open(engine_path, "wb").write(b"x")

    with ExtendTimeout(sent.append, every=0.1, extend=60):
        time.sleep(0.35)
    assert len(sent) >= 3 and set(sent) == {60}
    engine_cache.engine_for("q.onnx", "ab" * 32, str(tmp_path), (3, 32, 32), trt=trt, builder=slow_builder,
                            here=HERE_DEVICE, extend_timeout=sent.append)
    assert len(sent) >= 4


# -- legacy calibrator (TensorRT <= 10) -------------------------------------------------------------------------
def test_entropy_calibrator_feeds_every_batch_then_none_and_caches(monkeypatch, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, version="8.6.1")
    cuda = fake_tensorrt.FakeCuda(trt)
    batches = [np.full((2, 3, 4, 4), i, np.float32) for i in range(3)]
    cache = str(tmp_path / "calib.cache")
    cal = make_entropy_calibrator(trt, cuda, batches, cache, batch_size=2)
    assert cal.get_batch_size() == 2 and cal.read_calibration_cache() is None
    ptrs = [cal.get_batch(["image"]) for _ in range(3)]
    assert all(p is not None and len(p) == 1 for p in ptrs)
    np.testing.assert_array_equal(cuda.read(ptrs[2][0], np.float32, 32), np.full(32, 2, np.float32))
    assert cal.get_batch(["image"]) is None and cal.fed == 3
    cal.write_calibration_cache(b"TABLE")
    assert cal.read_calibration_cache() == b"TABLE"


def test_no_calibrator_on_tensorrt_11(monkeypatch, tmp_path):
    from edgesight.errors import EdgesightError

    trt = fake_tensorrt.install(monkeypatch, version="11.0.0", calibrators=False)
    with pytest.raises(EdgesightError, match="removed in 11.0"):
        make_entropy_calibrator(trt, fake_tensorrt.FakeCuda(trt), [], str(tmp_path / "c"), 1)


# -- the converter never builds from a Q/DQ ONNX the verifier rejected --------------------------------------------
@pytest.mark.host
def test_no_engine_build_after_verifier_rejection(monkeypatch, tmp_path):
    from edgesight.converters import onnx_quant
    from edgesight.converters.convert import ConvertOptions, convert
    from edgesight.calibration.preprocess import read_preprocess
    from edgesight.files import read_labels

    trt = fake_tensorrt.install(monkeypatch)
    monkeypatch.setitem(onnx_quant.PROFILES, "tensorrt", onnx_quant.PROFILES["tensorrt"]._replace(per_channel=False))
    res = convert(ConvertOptions(
        model=os.path.join(EXAMPLE_PACKAGE, "model.fp32.onnx"), calib=os.path.join(EXAMPLE, "images", "calib"),
        out=str(tmp_path / "p"), labels=read_labels(os.path.join(EXAMPLE, "labels.txt")),
        preprocess=read_preprocess(os.path.join(EXAMPLE, "preprocess.yaml")), targets=("tensorrt",),
        calib_count=20))
    assert res.exit_code == 7 and "per-channel" in res.report["failed"][0]["error"]
    assert not any(c[0] in ("Builder", "build_serialized_network") for c in trt.calls)
    assert not os.path.exists(str(tmp_path / "p" / "model.int8.engine"))


@pytest.mark.device
def test_real_tensorrt_runs_the_example_package(tmp_path):
    """Only where the real tensorrt and CUDA import: build an engine for this GPU and compare with ONNX Runtime."""
    from edgesight.calibration.dataset import ImageFolder, OrtCalibrationReader
    from edgesight.converters.onnx_quant import quantize_onnx
    from edgesight.runtimes import load_package
    from edgesight.runtimes.tensorrt_build import build_engine

    pkg = load_package(EXAMPLE_PACKAGE)
    data = ImageFolder(os.path.join(EXAMPLE, "images", "calib")).load(pkg.preprocess, 100)
    qdq = quantize_onnx(pkg.path(pkg.manifest.source), str(tmp_path / "q.onnx"),
                        OrtCalibrationReader("image", data.tensors), "tensorrt").path
    build_engine(qdq, str(tmp_path / "m.engine"), (3, 32, 32))
    with create_runtime("tensorrt", str(tmp_path / "m.engine")) as trt_rt, pkg.open_runtime("onnxruntime") as ort:
        a = next(iter(trt_rt.infer(data.tensors).values())).argmax(1)
        b = next(iter(ort.infer(data.tensors).values())).argmax(1)
    assert (a == b).mean() >= 0.98


@pytest.mark.host
def test_engine_build_command_adds_the_engine_to_the_package(monkeypatch, tmp_path):
    from edgesight.cli import main
    from edgesight.converters.convert import ConvertOptions, convert
    from edgesight.calibration.preprocess import read_preprocess
    from edgesight.files import read_labels
    from edgesight.runtimes import load_package

    out = str(tmp_path / "p")
    convert(ConvertOptions(model=os.path.join(EXAMPLE_PACKAGE, "model.fp32.onnx"),
                           calib=os.path.join(EXAMPLE, "images", "calib"), out=out,
                           labels=read_labels(os.path.join(EXAMPLE, "labels.txt")),
                           preprocess=read_preprocess(os.path.join(EXAMPLE, "preprocess.yaml")),
                           targets=("onnx-int8-trt",), calib_count=30,
                           val=os.path.join(EXAMPLE, "images", "field", "val"), min_agreement=0.0,
                           max_accuracy_drop=100.0))
    trt = fake_tensorrt.install(monkeypatch, version="8.6.2")
    assert main(["engine", "build", out, "--max-batch", "4"]) == 0
    pkg = load_package(out)  # hashes verified, the new artifact included
    engine = [a for a in pkg.manifest.artifacts if a.runtime == "tensorrt"]
    assert len(engine) == 1 and engine[0].file == "model.int8.engine"
    assert engine[0].built_for == {"tensorrt": "8.6.2", "device": "unknown", "compute": "unknown"}  # no CUDA here
    assert ("set_shape", "image", (1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32)) in trt.calls
    source = [a for a in pkg.manifest.artifacts if a.builds_tensorrt_engine][0]
    assert source.calibration is not None and engine[0].calibration == source.calibration  # the engine keeps it
    assert main(["engine", "build", out]) == 0  # again: replaces, never duplicates
    assert sum(a.runtime == "tensorrt" for a in load_package(out).manifest.artifacts) == 1


def test_engine_build_legacy_calibrator_path(monkeypatch, tmp_path):
    """TensorRT <= 10: implicit INT8 from the FP32 source, the calibrator fed with the images, then None."""
    import shutil

    from edgesight.cli import main
    from edgesight.runtimes import cuda_adapter, load_package

    pkg_dir = str(tmp_path / "pkg")
    shutil.copytree(EXAMPLE_PACKAGE, pkg_dir)
    trt = fake_tensorrt.install(monkeypatch, version="8.5.2")
    cuda = fake_tensorrt.FakeCuda(trt)
    monkeypatch.setattr(cuda_adapter, "cuda_adapter", lambda prefer=None: cuda)
    seen = {}

    real_build = trt.Builder.build_serialized_network

    def build(self, network, config):  # drain the calibrator as TensorRT would during an implicit-INT8 build
        cal = config.int8_calibrator
        seen["batches"] = 0
        while cal.get_batch(["image"]) is not None:
            seen["batches"] += 1
        cal.write_calibration_cache(b"TABLE")
        return real_build(self, network, config)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", build)
    assert main(["engine", "build", pkg_dir, "--legacy-calib", os.path.join(EXAMPLE, "images", "calib"),
                 "--calib-count", "40", "--calib-batch", "8"]) == 0
    assert seen["batches"] == 5  # 40 images in batches of 8, then None
    assert ("set_flag", "INT8") in trt.calls  # implicit INT8
    assert open(os.path.join(pkg_dir, "model.int8.engine.calib-cache"), "rb").read() == b"TABLE"
    assert any(a.runtime == "tensorrt" for a in load_package(pkg_dir).manifest.artifacts)
