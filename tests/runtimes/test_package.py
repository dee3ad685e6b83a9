"""Model package validation: a bad package is refused with an error naming the file and the field."""
import os
import shutil

import pytest
import yaml

from edgesight.calibration.preprocess import PreprocessSpec
from edgesight.calibration.preprocess import read_preprocess
from edgesight.converters.package_builder import create_fp32_package
from edgesight.files import read_labels
from edgesight.errors import ConfigError, ModelFileError, PackageError
from edgesight.runtimes import ModelPackage, load_package
from edgesight.runtimes.registry import is_installed

from support import EXAMPLE


def edit_manifest(pkg_dir, change):
    path = os.path.join(pkg_dir, "edgesight.yaml")
    with open(path) as f:
        data = yaml.safe_load(f)
    change(data)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def test_example_package_loads(example_package):
    pkg = load_package(example_package)
    assert pkg.manifest.name == "digits-cnn"
    assert len(pkg.labels) == 10
    assert {a.runtime for a in pkg.manifest.artifacts} == {"onnxruntime", "tflite"}
    assert pkg.preprocess.size == (32, 32)


def test_missing_required_field(package_copy):
    path = edit_manifest(package_copy, lambda d: d.pop("labels"))
    with pytest.raises(PackageError) as err:
        load_package(package_copy)
    assert err.value.field == "labels"
    assert err.value.file == path
    assert "missing" in str(err.value)


def test_missing_nested_field_is_named_with_its_path(package_copy):
    edit_manifest(package_copy, lambda d: d["artifacts"][1].pop("precision"))
    with pytest.raises(PackageError) as err:
        load_package(package_copy)
    assert err.value.field == "artifacts[1].precision"


def test_wrong_hash(package_copy):
    edit_manifest(package_copy, lambda d: d["artifacts"][0].update(sha256="0" * 64))
    with pytest.raises(PackageError) as err:
        load_package(package_copy)
    assert err.value.field == "artifacts[0].sha256"
    assert "model.fp32.onnx" in str(err.value)


def test_modified_model_file_fails_hash(package_copy):
    with open(os.path.join(package_copy, "model.fp32.tflite"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(PackageError) as err:
        load_package(package_copy)
    assert err.value.field == "artifacts[1].sha256"
    load_package(package_copy, verify_hashes=False)  # explicitly skipping the check still loads


def test_missing_file(package_copy):
    os.unlink(os.path.join(package_copy, "model.fp32.tflite"))
    with pytest.raises(PackageError) as err:
        load_package(package_copy)
    assert err.value.field == "artifacts[1].file"
    assert "model.fp32.tflite" in str(err.value)


def test_path_outside_package_is_refused(package_copy):
    edit_manifest(package_copy, lambda d: d["artifacts"][0].update(file="../../etc/passwd"))
    with pytest.raises(PackageError, match="inside the package") as err:
        load_package(package_copy)
    assert err.value.field == "artifacts[0].file"


def test_a_symlink_out_of_the_package_is_refused_like_a_path_outside_it(package_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(os.path.join(package_copy, "model.fp32.tflite"), str(outside))
    inside = os.path.join(package_copy, "model.fp32.tflite")
    os.unlink(inside)
    os.symlink(str(outside), inside)  # same bytes, so the sha256 still matches
    with pytest.raises(PackageError, match="outside the package directory") as err:
        load_package(package_copy)
    assert err.value.field == "artifacts[1].file"


def test_unsupported_schema_version(package_copy):
    edit_manifest(package_copy, lambda d: d.update(schema="edgesight.package/9"))
    with pytest.raises(PackageError, match="edgesight.package/1") as err:
        load_package(package_copy)
    assert err.value.field == "schema"


def test_unknown_field_is_an_error(package_copy):
    edit_manifest(package_copy, lambda d: d.update(lables=["typo"]))
    with pytest.raises(PackageError, match="unknown field") as err:
        load_package(package_copy)
    assert err.value.field == "lables"


def test_bad_enum_value(package_copy):
    edit_manifest(package_copy, lambda d: d["preprocess"].update(resize="squash"))
    with pytest.raises(PackageError, match="letterbox") as err:
        load_package(package_copy)
    assert err.value.field == "preprocess.resize"


def test_per_class_threshold_must_name_a_label(package_copy):
    edit_manifest(package_copy, lambda d: d["thresholds"].update(per_class={"eleven": 0.5}))
    with pytest.raises(PackageError, match="eleven"):
        load_package(package_copy)


def test_duplicate_labels(package_copy):
    edit_manifest(package_copy, lambda d: d["labels"].__setitem__(1, "zero"))
    with pytest.raises(PackageError, match="repeated: zero"):
        load_package(package_copy)


def test_yaml_syntax_error_names_line(package_copy):
    path = os.path.join(package_copy, "edgesight.yaml")
    with open(path, "a") as f:
        f.write("labels: [unclosed\n")
    with pytest.raises(PackageError, match=r"YAML syntax error at line \d+") as err:
        load_package(package_copy)
    assert err.value.file == path


def test_not_a_directory_and_no_manifest(tmp_path):
    with pytest.raises(PackageError, match="no such package"):
        load_package(str(tmp_path / "nope"))
    with pytest.raises(PackageError, match="no edgesight.yaml"):
        load_package(str(tmp_path))
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x")
    with pytest.raises(PackageError, match="directory"):
        load_package(str(f))


@pytest.mark.parametrize("runtime", ["onnxruntime", "tflite"])
def test_label_count_mismatch_is_refused_when_opening(package_copy, runtime):
    if not is_installed(runtime):
        pytest.skip("%s runtime not installed" % runtime)
    edit_manifest(package_copy, lambda d: d["labels"].append("ten"))
    pkg = load_package(package_copy)  # the manifest alone is consistent ...
    with pytest.raises(PackageError, match="10 scores per image but the package has 11 labels") as err:
        pkg.open_runtime(runtime)  # ... the model is not
    assert err.value.field == "labels"


def test_preprocess_size_mismatch_is_refused_when_opening(package_copy):
    edit_manifest(package_copy, lambda d: d["preprocess"].update(size=[28, 28]))
    with pytest.raises(PackageError, match="preprocess"):
        load_package(package_copy).open_runtime("onnxruntime")


def test_artifact_for_unknown_runtime(example_package):
    with pytest.raises(PackageError, match="no artifact for runtime 'tensorrt'"):
        load_package(example_package).artifact_for("tensorrt")


# -- creating packages -----------------------------------------------------------------------------------------
def _inputs():
    return (os.path.join(EXAMPLE, "package", "model.fp32.onnx"), read_labels(os.path.join(EXAMPLE, "labels.txt")),
            read_preprocess(os.path.join(EXAMPLE, "preprocess.yaml")))


def test_create_round_trip(tmp_path):
    onnx_path, labels, spec = _inputs()
    out = str(tmp_path / "new")
    pkg = create_fp32_package(onnx_path, labels, spec, out, name="digits", version="2.0.0", threshold=0.6)
    again = ModelPackage.load(out)
    assert again.manifest == pkg.manifest
    assert again.manifest.thresholds.default == 0.6
    assert again.manifest.source.file == "model.fp32.onnx"
    assert [a.runtime for a in again.manifest.artifacts] == ["onnxruntime"]
    with pytest.raises(PackageError, match="--force"):
        create_fp32_package(onnx_path, labels, spec, out, name="digits")


def test_create_refuses_label_count_mismatch(tmp_path):
    onnx_path, labels, spec = _inputs()
    with pytest.raises(ConfigError, match="outputs 10 scores but 9 labels") as err:
        create_fp32_package(onnx_path, labels[:9], spec, str(tmp_path / "p"), name="x")
    assert err.value.field == "labels"
    assert not os.path.exists(str(tmp_path / "p"))


def test_create_refuses_preprocess_that_does_not_fit(tmp_path):
    onnx_path, labels, _ = _inputs()
    gray = PreprocessSpec(size=(32, 32), color="gray", layout="nchw")
    with pytest.raises(ConfigError, match="takes 3 channel"):
        create_fp32_package(onnx_path, labels, gray, str(tmp_path / "p"), name="x")


def test_create_refuses_truncated_onnx(tmp_path):
    onnx_path, labels, spec = _inputs()
    bad = tmp_path / "cut.onnx"
    with open(onnx_path, "rb") as f:
        bad.write_bytes(f.read()[:5000])
    with pytest.raises(ModelFileError, match="not a readable ONNX model") as err:
        create_fp32_package(str(bad), labels, spec, str(tmp_path / "p"), name="x")
    assert err.value.file == str(bad)


def test_labels_file_checks(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# comment\ncat\n\ndog\n")
    assert read_labels(str(f)) == ["cat", "dog"]
    f.write_text("cat\ncat\n")
    with pytest.raises(ConfigError, match="repeated: cat"):
        read_labels(str(f))
    f.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_labels(str(f))
