"""The converter keeps its output honest: pre-processing always runs (or the conversion fails), the INT8 CPU profile
of a MobileNetV2-class model is faster than FP32, no TFLite with Select-TF ops is shipped, a target that fails at
validation keeps the others, and sensitive layers stay in float until the logits reach the fidelity target."""
import importlib.util
import json
import os
import shutil
import time

import numpy as np
import pytest

from edgesight.calibration.dataset import OrtCalibrationReader
from edgesight.converters import onnx_quant, sensitivity, tflite
from edgesight.converters.convert import ConvertOptions, convert
from edgesight.errors import ConversionError
from edgesight.runtimes import load_package

from support import EXAMPLE, EXAMPLE_PACKAGE, ROOT, SUPPORT, run_cli

MODEL = os.path.join(EXAMPLE_PACKAGE, "model.fp32.onnx")
CALIB = os.path.join(EXAMPLE, "images", "calib")
VAL = os.path.join(EXAMPLE, "images", "val")
COMMON = ["--labels", os.path.join(EXAMPLE, "labels.txt"), "--preprocess", os.path.join(EXAMPLE, "preprocess.yaml")]


def test_the_example_is_quantized_with_pre_processing_and_reports_every_step(tmp_path):
    r = run_cli("convert", MODEL, "--calib", CALIB, "--val", VAL, "--out", tmp_path / "p", "--targets",
                "onnx-int8-trt,onnx-int8-cpu", "--calib-count", "60", "--json", "-q", *COMMON)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    for a in rep["artifacts"]:
        assert a["steps"]["pre_process"].startswith("ran"), a["steps"]
        assert "logit cosine" in a["steps"]["sensitivity"]
    assert rep["artifacts"][0]["steps"]["verify"] == "TensorRT-safe Q/DQ rules hold"
    assert rep["versions"]["onnxruntime"] and rep["gate"]["min_cosine"] == 0.99
    assert "WARNING root" not in r.stderr  # onnxruntime's warnings go to the debug log


def test_pre_processing_that_cannot_run_fails_the_conversion(tmp_path):
    """ONNX Runtime 1.32 needs sympy for it; without, quantizing anyway made the CPU profile 3x slower than FP32."""
    shadow = tmp_path / "shadow" / "sympy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('sympy is not installed here')\n")
    r = run_cli("convert", MODEL, "--calib", CALIB, "--out", tmp_path / "p", "--targets", "onnx-int8-cpu",
                "--calib-count", "10", "-q", *COMMON, env={"PYTHONPATH": str(shadow.parent)})
    assert r.returncode == 7 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "sympy" in r.stdout and "edgesight[convert]" in r.stdout
    assert not (tmp_path / "p" / "model.int8.cpu.onnx").exists()


def _mobilenet(tmp_path):
    spec = importlib.util.spec_from_file_location("mobilenetv2", os.path.join(ROOT, "bench", "mobilenetv2.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build(str(tmp_path / "mnv2.onnx"))


def _median_ms(path, x, runs=15):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def test_the_int8_cpu_profile_of_a_mobilenetv2_is_faster_than_fp32(tmp_path):
    """The canary for dependency drift: measured 0.34-0.44x by hand and in bench/coverage.py; a skipped or degraded
    step once made it 1.1-3.3x. A ratio in one process, interleaved runs, a generous margin (< 0.8x)."""
    src = _mobilenet(tmp_path)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    q = onnx_quant.quantize_onnx(src, str(tmp_path / "int8.onnx"), OrtCalibrationReader("image", calib), "cpu")
    x = calib[:1]
    ratios = []
    for _ in range(3):  # interleaved: the VM's speed drifts within seconds
        ratios.append(_median_ms(q.path, x) / _median_ms(src, x))
    print("INT8 cpu profile / FP32 latency:", ["%.2f" % r for r in ratios])
    assert min(ratios) < 0.8, ratios


def test_select_tf_ops_are_found_and_named(tmp_path):
    flex = os.path.join(SUPPORT, "flex_erf.tflite")  # remade by tests/support/make_flex_tflite.py
    assert tflite.custom_ops(flex) == ["FlexErf"]
    assert tflite.custom_ops(os.path.join(EXAMPLE_PACKAGE, "model.fp32.tflite")) == []
    from support.onnx_models import tiny_cnn

    onnx_path = tiny_cnn(tmp_path / "m.onnx")
    with pytest.raises(ConversionError, match="Select-TF .*FlexErf.*LiteRT"):
        tflite.check_no_flex(flex, onnx_path)


def test_a_target_that_fails_at_validation_keeps_the_others(tmp_path, monkeypatch):
    """ConvNeXt and ViT once lost every target because onnx2tf's TFLite did not load: now it is recorded as
    failed at its step, the file removed, and the others validated, written and reported (exit 7)."""
    from edgesight.calibration.preprocess import read_preprocess
    from edgesight.converters import targets
    from edgesight.files import read_labels

    def bad_tflite(job, target):  # what onnx2tf produced for them: a file LiteRT cannot load
        shutil.copyfile(os.path.join(SUPPORT, "flex_erf.tflite"), os.path.join(job.out, targets.FILES[target]))
        return [targets._entry(target, "tflite", "nhwc")]

    monkeypatch.setattr(targets, "tflite_int8", bad_tflite)
    out = str(tmp_path / "p")
    res = convert(ConvertOptions(model=MODEL, calib=CALIB, val=VAL, out=out, calib_count=40,
                                 labels=read_labels(os.path.join(EXAMPLE, "labels.txt")),
                                 preprocess=read_preprocess(os.path.join(EXAMPLE, "preprocess.yaml")),
                                 targets=("onnx-int8-cpu", "tflite-int8")))
    assert res.exit_code == 7
    assert [(f["target"], f["step"]) for f in res.report["failed"]] == [("tflite-int8", "validate")]
    assert not os.path.exists(os.path.join(out, "model.int8.tflite"))
    assert [a.file for a in load_package(out).manifest.artifacts] == ["model.fp32.onnx", "model.int8.cpu.onnx"]
    assert os.path.isfile(os.path.join(out, "report.html")) and res.report["artifacts"][0]["gate"]["passed"]


def _transformer_block(path, outlier=60.0):
    """x -> LayerNorm -> MatMul(W) -> + x (residual) -> y, x with one channel far larger than the rest: quantizing
    the residual Add's inputs crushes the small channels (a ViT's residual stream in miniature)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    d = 16
    inits = [numpy_helper.from_array(np.ones(d, np.float32), "g"), numpy_helper.from_array(np.zeros(d, np.float32),
                                                                                          "b"),
             numpy_helper.from_array((rng.standard_normal((d, d)) * 0.3).astype(np.float32), "W")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "W"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "x"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "blk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    data = rng.standard_normal((64, 4, d)).astype(np.float32)  # tokens: 3-D, as in a ViT (no Gemm fusion)
    data[:, :, 3] *= outlier
    return str(path), data


def test_the_sensitive_ops_stay_in_float_by_default():
    import onnx

    path, _ = _transformer_block(os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgesight-blk.onnx"))
    assert sensitivity.default_float_nodes(onnx.load(path)) == ["ln"]


def test_sensitivity_keeps_layers_in_float_until_the_cosine_target_is_met(tmp_path):
    path, data = _transformer_block(tmp_path / "blk.onnx")
    plain = onnx_quant.quantize_onnx(path, str(tmp_path / "q0.onnx"), OrtCalibrationReader("x", data), "cpu")
    ref = sensitivity.run(path, "x", data)
    from edgesight.converters.metrics import cosine_rows

    before = float(cosine_rows(sensitivity.run(plain.path, "x", data), ref).mean())
    tuned = onnx_quant.quantize_onnx(path, str(tmp_path / "q1.onnx"), OrtCalibrationReader("x", data), "cpu",
                                     tuning=onnx_quant.Tuning("x", data, min_cosine=max(0.999, before + 1e-4)))
    after = float(cosine_rows(sensitivity.run(tuned.path, "x", data), ref).mean())
    assert after > before and tuned.cosine == pytest.approx(after, abs=1e-6)
    assert "ln" in tuned.float_nodes and len(tuned.float_nodes) > len(plain.float_nodes)
    assert "residual" in tuned.float_nodes and "fc" not in tuned.float_nodes  # the weighted layer stays INT8
    assert "sensitivity" in tuned.steps and "->" in tuned.steps["sensitivity"]


def test_the_target_is_met_by_the_lower_bound_of_the_cosine_not_by_the_mean(tmp_path):
    """A few tuning images can meet the target by luck (MobileNetV3: 0.9943 on 32 images, 0.9898 on 100): a target
    between the plain model's lower bound and its mean is not met, and the step keeps layers in float."""
    from edgesight.converters.metrics import cosine_rows, lower_bound

    path, data = _transformer_block(tmp_path / "blk.onnx")
    plain = onnx_quant.quantize_onnx(path, str(tmp_path / "q0.onnx"), OrtCalibrationReader("x", data), "cpu")
    rows = cosine_rows(sensitivity.run(plain.path, "x", data), sensitivity.run(path, "x", data))
    assert lower_bound(rows) < rows.mean() - 1e-4
    target = (lower_bound(rows) + rows.mean()) / 2
    tuned = onnx_quant.quantize_onnx(path, str(tmp_path / "q1.onnx"), OrtCalibrationReader("x", data), "cpu",
                                     tuning=onnx_quant.Tuning("x", data, min_cosine=target))
    assert len(tuned.float_nodes) > len(plain.float_nodes), tuned.steps
    assert "lower bound" in tuned.steps["sensitivity"]


@pytest.mark.parametrize("gain,kept", [(0.0005, False), (0.003, True)])
def test_a_group_stays_in_float_only_for_a_real_gain(tmp_path, monkeypatch, gain, kept):
    """Each layer in float costs speed: MobileNetV3 (random weights) gained +0.0007, +0.0005, +0.0001 for 20 float
    layers. The quantize-and-measure loop is driven here by a cosine that grows by ``gain`` per
    group in float, on the real graph's groups."""
    import onnx

    path, data = _transformer_block(tmp_path / "blk.onnx")
    defaults = sensitivity.default_float_nodes(onnx.load(path))
    state = {"exclude": []}
    monkeypatch.setattr(sensitivity, "run", lambda model, name, tensors: np.ones((len(tensors), 2)))
    monkeypatch.setattr(sensitivity, "tensor_sqnr", lambda *a: {})
    monkeypatch.setattr(sensitivity, "cosine_rows", lambda a, b: np.full(len(a), 0.95 + gain * (
        len(state["exclude"]) > len(defaults))))
    calls = []

    def quantize(exclude, out, rule="calibrated"):
        state.update(exclude=list(exclude))
        calls.append(tuple(exclude))
        with open(out, "w") as f:
            json.dump(list(exclude), f)

    tuned = sensitivity.tune(path, str(tmp_path / "q.onnx"), quantize, "x", data, min_cosine=0.99, max_rounds=2)
    assert (len(tuned.excluded) > len(defaults)) is kept
    assert (state["exclude"] != tuned.excluded) is not kept  # without a gain the last try is not the chosen one,
    with open(tmp_path / "q.onnx") as f:
        assert json.load(f) == tuned.excluded  # ... and its file is what the step leaves at the destination
    assert len(set(calls)) == len(calls)  # nothing quantized twice


def test_over_several_rounds_the_chosen_try_is_the_file_left_and_the_one_measured_next(tmp_path, monkeypatch):
    """Every try is written to its own file; the chosen one survives the next rounds (a name reused after the
    others were deleted once overwrote it), it is what the next round's SQNR measures, and it ends at ``dst``."""
    from types import SimpleNamespace

    path, data = _transformer_block(tmp_path / "blk.onnx")
    nodes = {g: [SimpleNamespace(name="%s%d" % (g, i), input=[]) for i in range(2)] for g in "abcde"}
    state, measured = {"exclude": []}, []
    monkeypatch.setattr(sensitivity, "groups", lambda model, excluded: {
        g: ns for g, ns in nodes.items() if ns[0].name not in excluded})
    monkeypatch.setattr(sensitivity, "run", lambda model, name, tensors: np.ones((len(tensors), 2)))
    monkeypatch.setattr(sensitivity, "cosine_rows", lambda a, b: np.full(len(a), 0.9 + 0.01 * len(state["exclude"])
                                                                            + 0.001 * ("e0" in state["exclude"])))

    def sqnr(prepared, qdq, *a):
        with open(qdq) as f:
            measured.append(json.load(f))
        return {}

    monkeypatch.setattr(sensitivity, "tensor_sqnr", sqnr)

    def quantize(exclude, out, rule="calibrated"):
        state.update(exclude=list(exclude))
        with open(out, "w") as f:
            json.dump(list(exclude), f)

    # +0.02 a round from 0.91: the target is met in the last round (one more round would stop at once)
    tuned = sensitivity.tune(path, str(tmp_path / "q.onnx"), quantize, "x", data, min_cosine=0.9695, max_rounds=4)
    assert tuned.rounds == 4 and len(tuned.excluded) == 1 + 6, tuned
    assert measured == [["ln"], tuned.excluded[:3], tuned.excluded[:5]]  # each round measures the model chosen
    with open(tmp_path / "q.onnx") as f:
        assert json.load(f) == tuned.excluded


def test_the_float_model_activations_are_collected_once_for_every_round(tmp_path, monkeypatch):
    """They do not change between rounds: collecting them again cost MobileNetV3 1.3 s a round."""
    from onnxruntime.quantization import qdq_loss_debug

    path, data = _transformer_block(tmp_path / "blk.onnx")
    collected, rounds = [], []
    real_collect, real_sqnr = qdq_loss_debug.collect_activations, sensitivity.tensor_sqnr
    monkeypatch.setattr(qdq_loss_debug, "collect_activations", lambda *a, **k: collected.append(1) or
                        real_collect(*a, **k))
    monkeypatch.setattr(sensitivity, "tensor_sqnr", lambda *a: rounds.append(1) or real_sqnr(*a))
    monkeypatch.setattr(sensitivity, "MIN_GAIN", -1.0)  # every round runs
    monkeypatch.setattr(sensitivity, "out_of_reach", lambda *a: False)
    onnx_quant.quantize_onnx(path, str(tmp_path / "q.onnx"), OrtCalibrationReader("x", data), "cpu",
                             tuning=onnx_quant.Tuning("x", data, min_cosine=1.0))
    assert len(rounds) >= 2 and len(collected) == len(rounds) + 1, (len(rounds), len(collected))


class CountingReader(OrtCalibrationReader):
    """The calibration images, counting the batches handed out (a pass over them: len(tensors) / batch)."""

    handed = 0

    def get_next(self):
        item = super().get_next()
        self.handed += item is not None
        return item


def test_the_sensitivity_step_calibrates_once_and_writes_what_calibrating_every_try_writes(tmp_path, monkeypatch):
    """Activation ranges do not depend on which nodes stay in float: the step calibrates once (ONNX Runtime's
    calibration cache) and places Q/DQ for every try, and the model it writes is the one recalibrating would."""
    import onnx

    path, data = _transformer_block(tmp_path / "blk.onnx")
    tuning = onnx_quant.Tuning("x", data, min_cosine=1.0)  # never met: every round runs
    once = CountingReader("x", data)
    cached = onnx_quant.quantize_onnx(path, str(tmp_path / "a.onnx"), once, "cpu", tuning=tuning)
    assert onnx_quant._takes_cache(onnx_quant._import_quantization())  # the ONNX Runtime CI installs has it
    monkeypatch.setattr(onnx_quant, "_takes_cache", lambda q: False)
    each = CountingReader("x", data)
    fresh = onnx_quant.quantize_onnx(path, str(tmp_path / "b.onnx"), each, "cpu", tuning=tuning)
    assert once.handed == len(data)  # one pass over the 64 images (batch 1)
    assert each.handed >= 2 * len(data), each.handed  # a pass for every try (here 2)
    assert cached.float_nodes == fresh.float_nodes and cached.cosine == fresh.cosine
    a, b = onnx.load(cached.path), onnx.load(fresh.path)
    assert a.graph.SerializeToString() == b.graph.SerializeToString()


def test_the_profiles_of_one_conversion_pre_process_and_calibrate_once_and_write_what_each_alone_writes(
        tmp_path, monkeypatch):
    """The activation ranges do not depend on the profile (its symmetry and types apply to them afterwards): with a
    shared directory the second profile reuses the first's pre-processed model and ranges, and both write the same
    models as when each runs alone."""
    import onnx

    path, data = _transformer_block(tmp_path / "blk.onnx")
    pre = []
    real_pre = onnx_quant.pre_process
    monkeypatch.setattr(onnx_quant, "pre_process", lambda *a: pre.append(1) or real_pre(*a))
    shared, readers, alone = str(tmp_path / "shared"), [], {}
    os.mkdir(shared)
    for profile in ("tensorrt", "cpu"):
        readers.append(CountingReader("x", data))
        onnx_quant.quantize_onnx(path, str(tmp_path / ("s-" + profile)), readers[-1], profile, shared=shared)
        alone[profile] = onnx_quant.quantize_onnx(path, str(tmp_path / ("a-" + profile)), OrtCalibrationReader(
            "x", data), profile).path
    assert len(pre) == 3  # once shared, once for each profile alone
    assert readers[0].handed == len(data) and readers[1].handed == 0  # the second profile did not calibrate
    for profile in ("tensorrt", "cpu"):
        a, b = onnx.load(str(tmp_path / ("s-" + profile))), onnx.load(alone[profile])
        assert a.graph.SerializeToString() == b.graph.SerializeToString(), profile


def test_the_float16_profile_for_tensorrt_10_and_11(tmp_path):
    from edgesight.converters.qdq_verify import check_tensorrt_qdq

    r = run_cli("convert", MODEL, "--calib", CALIB, "--val", VAL, "--out", tmp_path / "p", "--targets",
                "onnx-int8-trt-fp16", "--calib-count", "60", "--json", "-q", *COMMON)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    fp16 = [a for a in rep["artifacts"] if a["target"] == "onnx-int8-trt-fp16"][0]
    assert fp16["profile"] == "tensorrt-qdq-fp16" and fp16["metrics"]["cosine_mean"] >= 0.99
    assert [a["target"] for a in rep["artifacts"]] == ["onnx-int8-trt", "onnx-int8-trt-fp16"]  # made from it
    plain, half = (os.path.join(str(tmp_path / "p"), f) for f in ("model.int8.onnx", "model.int8.fp16.onnx"))
    assert check_tensorrt_qdq(half, fp16=True) == [] and check_tensorrt_qdq(plain) == []
    rules = {v.rule for v in check_tensorrt_qdq(plain, fp16=True)}
    assert {"opset", "fp16"} <= rules  # the float32 file is not the float16 profile
    assert "opset" in {v.rule for v in check_tensorrt_qdq(half)}  # nor can TensorRT 8.5/8.6 parse opset 19


@pytest.mark.parametrize("major, profile", [(8, "tensorrt-qdq"), (10, "tensorrt-qdq-fp16"), (11, "tensorrt-qdq-fp16")])
def test_each_tensorrt_builds_from_the_profile_it_wants(monkeypatch, major, profile):
    from edgesight.runtimes import package as package_module
    from edgesight.runtimes.manifest import Artifact

    pkg = load_package(EXAMPLE_PACKAGE)
    extra = [Artifact(runtime="onnxruntime", file="model.fp32.onnx", precision="int8", sha256="0" * 64,
                      profile=p) for p in ("tensorrt-qdq", "tensorrt-qdq-fp16")]
    pkg = type(pkg)(pkg.root, pkg.manifest.model_copy(update={"artifacts": list(pkg.manifest.artifacts) + extra}))
    monkeypatch.setattr(package_module, "tensorrt_major", lambda: major)
    monkeypatch.setattr(package_module, "is_installed", lambda name: True)
    choice = pkg.artifact_for("auto", machine="aarch64")
    assert choice.runtime == "tensorrt" and choice.artifact.profile == profile
    assert pkg.tensorrt_source()[1].profile == profile
    assert pkg.artifact_for("onnxruntime").artifact.profile is None  # ONNX Runtime never takes either first
