"""The Runtime contract, run over every backend installed here, on the real example model and images."""
import os
import sys

import numpy as np
import pytest

from edgesight.calibration.images import list_images, load_image
from edgesight.calibration.preprocess import preprocess_batch, to_layout
from edgesight.errors import MissingDependencyError, ModelFileError, RuntimeStateError
from edgesight.runtimes import RUNTIME_NAMES, create_runtime, installed_runtimes, load_package
from edgesight.runtimes.base import QuantParams, dequantize, quantize
from edgesight.runtimes.postprocess import softmax, to_probabilities, top_k

from support import EXAMPLE, EXAMPLE_PACKAGE, SUPPORT

BACKENDS = [n for n in RUNTIME_NAMES if n != "tensorrt"]  # tensorrt: its own issue, contract tests come with it


@pytest.fixture(scope="module")
def pkg():
    return load_package(EXAMPLE_PACKAGE)


@pytest.fixture(scope="module")
def val():
    items = list_images(os.path.join(EXAMPLE, "images", "val"))
    assert len(items) == 300
    return items


@pytest.fixture(scope="module")
def batch(pkg, val):
    return preprocess_batch([load_image(p) for p, _ in val[::10]], pkg.preprocess)  # 30 images, all classes


@pytest.fixture(params=BACKENDS)
def runtime(request, pkg):
    if request.param not in installed_runtimes():
        pytest.skip("%s runtime not installed" % request.param)
    rt = pkg.open_runtime(request.param)
    yield rt
    rt.close()


def test_both_cpu_backends_are_installed_here():
    # CI installs edgesight[all]; if this fails the contract tests below silently cover less than they claim
    assert set(BACKENDS) <= set(installed_runtimes())


def test_specs(runtime, pkg):
    (inp,) = runtime.inputs
    assert inp.dtype == "float32" and len(inp.shape) == 4
    assert inp.layout == runtime.layout
    assert runtime.outputs[0].shape[-1] == len(pkg.labels)


def test_infer_shapes_and_dtype(runtime, batch, pkg):
    out = runtime.infer(batch)
    (logits,) = out.values()
    assert logits.shape == (len(batch), len(pkg.labels)) and logits.dtype == np.float32
    assert list(out) == [t.name for t in runtime.outputs]


def test_batch_results_equal_single_results(runtime, batch):
    whole = next(iter(runtime.infer(batch).values()))
    singles = np.concatenate([next(iter(runtime.infer(batch[i:i + 1]).values())) for i in range(7)])
    np.testing.assert_allclose(whole[:7], singles, rtol=1e-4, atol=1e-4)


def test_a_fixed_batch_model_is_run_in_slices_of_its_batch(tmp_path):
    """ONNX Runtime refuses 5 images for a batch-1 input: the runtime slices (a frame's regions are one batch)."""
    from support.onnx_models import tiny_cnn

    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    dynamic = create_runtime("onnxruntime", tiny_cnn(tmp_path / "n.onnx")).load()
    want = next(iter(dynamic.infer(images).values()))
    assert dynamic.max_batch is None
    for fixed in (1, 2, 3):
        rt = create_runtime("onnxruntime", tiny_cnn(tmp_path / ("b%d.onnx" % fixed), batch=fixed)).load()
        assert rt.max_batch == fixed
        np.testing.assert_allclose(next(iter(rt.infer(images).values())), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeStateError, match="fixed batch of 3; pass a multiple of 3 images, not 4"):
        rt.infer(images[:4])


def test_the_dynamic_range_rule_says_what_this_tflite_interpreter_runs(pkg, batch):
    """tests/support/digits_dynamic_range.tflite is the example converted with ``--min-cosine 0.99999`` (int8
    weights, float activations). LiteRT runs it; tflite-runtime 2.14, the interpreter of Python 3.8, cannot. The
    rule that keeps such a file from being chosen must say which, on every Python CI runs this on."""
    from edgesight.runtimes.registry import runs_dynamic_range_tflite

    rt = create_runtime("tflite", os.path.join(SUPPORT, "digits_dynamic_range.tflite"), layout="nhwc")
    if runs_dynamic_range_tflite():
        with rt:
            got = next(iter(rt.infer(batch).values())).argmax(1)
        with pkg.open_runtime("onnxruntime") as fp32:
            want = next(iter(fp32.infer(batch).values())).argmax(1)
        assert (got == want).all()
    else:
        with pytest.raises(ModelFileError, match="FULLY_CONNECTED"):
            rt.load()


def test_accuracy_on_validation_split(runtime, pkg, val):
    x = preprocess_batch([load_image(p) for p, _ in val], pkg.preprocess)
    pred = next(iter(runtime.infer(x).values())).argmax(1)
    truth = np.array([pkg.labels.index(lbl) for _, lbl in val])
    assert (pred == truth).mean() >= 0.98


def test_wrong_shape_is_refused_with_the_expected_shape(runtime):
    with pytest.raises(RuntimeStateError, match=r"expects \[\?, 3, 32, 32\] in nchw"):
        runtime.infer(np.zeros((1, 32, 32, 3), dtype=np.float32))
    with pytest.raises(RuntimeStateError, match="float32"):
        runtime.infer(np.zeros((1, 3, 32, 32), dtype=np.uint8))
    with pytest.raises(RuntimeStateError, match="numpy array"):
        runtime.infer([[0.0]])


def test_state_checks(pkg):
    for name in installed_runtimes():
        art = pkg.artifact_for(name).artifact
        rt = create_runtime(name, pkg.path(art), input_layout="nchw", layout=art.layout)
        with pytest.raises(RuntimeStateError, match="not loaded"):
            rt.infer(np.zeros((1, 3, 32, 32), dtype=np.float32))
        with pytest.raises(RuntimeStateError, match="not loaded"):
            rt.inputs
        with rt:
            assert rt.is_loaded
        assert not rt.is_loaded
        with pytest.raises(RuntimeStateError, match="closed"):
            rt.infer(np.zeros((1, 3, 32, 32), dtype=np.float32))
        with pytest.raises(RuntimeStateError, match="closed"):
            rt.load()
        rt.close()  # closing twice is fine


def test_backends_agree_on_the_same_images(pkg, batch):
    names = [n for n in BACKENDS if n in installed_runtimes()]
    if len(names) < 2:
        pytest.skip("needs two backends; installed: %s" % names)
    outs = {}
    for name in names:
        with pkg.open_runtime(name) as rt:
            outs[name] = next(iter(rt.infer(batch).values()))
    ref = outs[names[0]]
    for name in names[1:]:
        np.testing.assert_array_equal(outs[name].argmax(1), ref.argmax(1))
        np.testing.assert_allclose(outs[name], ref, rtol=1e-3, atol=1e-3)


def test_nhwc_caller_layout(pkg, batch):
    """A caller preprocessing to NHWC gets the same result: the backend transposes to its own layout."""
    for name in installed_runtimes():
        art = pkg.artifact_for(name).artifact
        with create_runtime(name, pkg.path(art), input_layout="nchw", layout=art.layout) as a, \
                create_runtime(name, pkg.path(art), input_layout="nhwc", layout=art.layout) as b:
            np.testing.assert_allclose(next(iter(a.infer(batch).values())),
                                       next(iter(b.infer(batch.transpose(0, 2, 3, 1)).values())), rtol=1e-5,
                                       atol=1e-5)


def test_native_input_layout_takes_the_models_own_layout(pkg, val):
    """``input_layout="native"`` (what the agent uses) takes the artifact's layout: NHWC for TFLite, NCHW for ONNX;
    preprocessing straight into it gives the same outputs as the package's layout."""
    images = [load_image(p) for p, _ in val[:12]]
    expected = {"onnxruntime": "nchw", "tflite": "nhwc"}
    for name in installed_runtimes():
        with pkg.open_runtime(name) as ref, pkg.open_runtime(name, input_layout="native") as rt:
            assert rt.input_layout == rt.layout == expected[name]
            spec = pkg.preprocess_for(rt)
            assert spec.layout == expected[name] and pkg.preprocess.layout == "nchw"
            x = preprocess_batch(images, spec)
            assert x.shape[1:] == ((3, 32, 32) if rt.layout == "nchw" else (32, 32, 3))
            np.testing.assert_allclose(next(iter(rt.infer(x).values())),
                                       next(iter(ref.infer(preprocess_batch(images, pkg.preprocess)).values())),
                                       rtol=1e-5, atol=1e-5)
            with pytest.raises(RuntimeStateError, match="nchw|nhwc"):
                rt.infer(to_layout(x, rt.layout, "nchw" if rt.layout == "nhwc" else "nhwc"))


@pytest.mark.parametrize("name", BACKENDS)
def test_missing_file_and_garbage_file(name, tmp_path):
    if name not in installed_runtimes():
        pytest.skip("%s runtime not installed" % name)
    with pytest.raises(ModelFileError, match="does not exist"):
        create_runtime(name, str(tmp_path / "none")).load()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelFileError) as err:
        create_runtime(name, str(junk)).load()
    assert err.value.file == str(junk)


def test_truncated_tflite_is_a_model_file_error(pkg, tmp_path):
    if "tflite" not in installed_runtimes():
        pytest.skip("tflite runtime not installed")
    art = pkg.artifact_for("tflite").artifact
    cut = tmp_path / "cut.tflite"
    with open(pkg.path(art), "rb") as f:
        cut.write_bytes(f.read()[:4096])
    with pytest.raises(ModelFileError):
        create_runtime("tflite", str(cut)).load()


@pytest.mark.parametrize("name,module,extra", [("onnxruntime", "onnxruntime", "onnx"),
                                                ("tflite", "ai_edge_litert", "tflite")])
def test_missing_package_names_the_extra(name, module, extra, monkeypatch, pkg):
    # make the import fail as it would where the package is not installed
    for mod in list(sys.modules):
        if mod == module or mod.startswith(module + "."):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, module, None)
    for alt in ("tflite_runtime", "tflite_runtime.interpreter", "tensorflow", "tensorflow.lite"):
        monkeypatch.setitem(sys.modules, alt, None)
    art = pkg.artifact_for(name).artifact
    with pytest.raises(MissingDependencyError) as err:
        create_runtime(name, pkg.path(art)).load()
    assert "pip install 'edgesight[%s]'" % extra in str(err.value)


def test_tensorrt_place_is_reserved_and_says_what_to_do(pkg, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(MissingDependencyError, match="JetPack"):
        create_runtime("tensorrt", str(engine)).load()


# -- quantization and postprocessing helpers (pure functions) ---------------------------------------------------
def test_quantize_rounds_and_saturates():
    q = QuantParams(scale=0.5, zero_point=-3)
    x = np.array([0.0, 0.25, 0.75, 100.0, -100.0], dtype=np.float32)
    # round(x / 0.5) + (-3), halves away from zero: 0-3, round(0.5)=1 -> -2, round(1.5)=2 -> -1, 197 -> 127, -203 -> -128
    assert quantize(x, q, np.dtype("int8")).tolist() == [-3, -2, -1, 127, -128]
    assert quantize(np.array([-0.25]), q, np.dtype("int8")).tolist() == [-4]  # round(-0.5) = -1
    assert dequantize(np.array([-3, 127], dtype=np.int8), q).tolist() == [0.0, 65.0]
    u = QuantParams(scale=1.0, zero_point=128)
    assert quantize(np.array([-200.0, 0.0, 200.0]), u, np.dtype("uint8")).tolist() == [0, 128, 255]


def test_softmax_and_top_k():
    p = softmax(np.array([[0.0, np.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.25, 0.75]], rtol=1e-6)
    assert to_probabilities(np.array([0.2, 0.8]), "probabilities").tolist() == pytest.approx([0.2, 0.8])
    preds = top_k(np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], k=2)
    assert [(p.label, p.index) for p in preds] == [("b", 1), ("c", 2)]
    assert preds[0].score == pytest.approx(0.6)
    with pytest.raises(ValueError):
        top_k(np.array([0.1]), ["a", "b"])


def test_onnxruntime_spinning_off_reaches_the_session(pkg, batch):
    """``spinning: false`` (the agent's default) must reach ONNX Runtime, not only the config: its workers
    spin-waiting burnt 3x the CPU at a paced camera."""
    from edgesight.runtimes.ort_backend import OnnxRuntimeConfig

    quiet = pkg.open_runtime("onnxruntime", config=OnnxRuntimeConfig(threads=2, spinning=False))
    opts = quiet._session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 2
    spinning = pkg.open_runtime("onnxruntime", config=OnnxRuntimeConfig(threads=2))
    out = quiet.outputs[0].name
    np.testing.assert_allclose(quiet.infer(batch)[out], spinning.infer(batch)[out], rtol=1e-5, atol=1e-6)
    quiet.close()
    spinning.close()
