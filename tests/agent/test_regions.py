"""Regions of interest: boxes on frames of a known size, crops taken before the package's resize and stacked into one
batch per model, a box outside the frame reported (not a crash), and config errors that name the field."""
import os

import numpy as np
import pytest

from edgesight.agent.cameras import CameraConfig
from edgesight.agent.config import load_config
from edgesight.agent.regions import MAIN, Preparer, View, box_pixels
from edgesight.agent.sources import Frame
from edgesight.calibration.images import load_image
from edgesight.calibration.preprocess import preprocess
from edgesight.errors import ConfigError

from support import EXAMPLE, EXAMPLE_PACKAGE

COUNTER = os.path.join(EXAMPLE, "images", "counter")  # 128x64: tens wheel at x 16, ones at x 64 (48x48 each)
REGIONS = [{"name": "tens", "box": [16, 8, 48, 48]}, {"name": "ones", "box": [64, 8, 48, 48]}]


def camera(name="counter", regions=REGIONS, **kw):
    return CameraConfig(name=name, source={"type": "folder", "path": COUNTER}, regions=regions, **kw)


def counter_frame(n):
    """Frame n of the example counter, which reads 37 + n // 3."""
    return Frame(load_image(os.path.join(COUNTER, "frame_%03d.png" % n)), "rgb", 0.0, n)


def test_boxes_in_pixels_and_in_fractions_of_the_frame():
    assert box_pixels([16, 8, 48, 48], "pixels", 64, 128) == (16, 8, 48, 48)
    assert box_pixels([0.125, 0.125, 0.375, 0.75], "relative", 64, 128) == (16, 8, 48, 48)
    assert box_pixels([0, 0, 1, 1], "relative", 480, 640) == (0, 0, 640, 480)
    assert box_pixels([0.5, 0.5, 0.5, 0.5], "relative", 3, 3) == (2, 2, 1, 1)  # halves round up, inside the frame
    with pytest.raises(ValueError, match=r"reaches x=148, y=56, outside the 128x64 frame"):
        box_pixels([100, 8, 48, 48], "pixels", 64, 128)
    with pytest.raises(ValueError, match="less than a pixel"):
        box_pixels([0, 0, 0.001, 0.5], "relative", 64, 128)


def test_crops_are_taken_before_the_packages_resize_and_stacked_into_one_batch(example_ort):
    pkg, rt = example_ort
    spec = pkg.preprocess_for(rt)
    prep = Preparer([camera(), camera("front", [])], {MAIN: spec})
    frame = counter_frame(15)  # reads 42
    batches, views = prep("counter", frame)
    assert list(batches) == [MAIN] and batches[MAIN].shape == (2, 3, 32, 32)
    assert views == [View("tens", (16, 8, 48, 48), MAIN, 0), View("ones", (64, 8, 48, 48), MAIN, 1)]
    img = frame.image
    np.testing.assert_array_equal(batches[MAIN][0], preprocess(np.ascontiguousarray(img[8:56, 16:64]), spec))
    np.testing.assert_array_equal(batches[MAIN][1], preprocess(np.ascontiguousarray(img[8:56, 64:112]), spec))
    logits = next(iter(rt.infer(batches[MAIN]).values()))
    assert [pkg.labels[i] for i in logits.argmax(axis=1)] == ["four", "two"]
    # the whole frame of the same picture is one digit-sized blur of both: not what either region says
    whole, whole_views = prep("front", frame)
    assert whole_views == [View(None, None, MAIN, 0)]
    np.testing.assert_array_equal(whole[MAIN], preprocess(img, spec)[None])


def test_regions_with_a_package_of_their_own_are_batched_apart(example_ort):
    pkg, rt = example_ort
    spec = pkg.preprocess_for(rt)
    other = spec.model_copy(update={"size": (16, 16)})
    cam = camera(regions=[dict(REGIONS[0], model="/pkgs/other"), REGIONS[1]])
    batches, views = Preparer([cam], {MAIN: spec, "/pkgs/other": other})("counter", counter_frame(0))
    assert batches[MAIN].shape == (1, 3, 32, 32) and batches["/pkgs/other"].shape == (1, 3, 16, 16)
    assert [(v.region, v.group, v.row) for v in views] == [("tens", "/pkgs/other", 0), ("ones", MAIN, 0)]


def test_a_box_outside_the_frame_is_reported_and_skipped_until_the_frame_fits(example_ort):
    pkg, rt = example_ort
    cam = camera(regions=REGIONS + [{"name": "far", "box": [150, 0, 40, 40]}])
    prep = Preparer([cam], {MAIN: pkg.preprocess_for(rt)})
    batches, views = prep("counter", counter_frame(0))
    assert [v.region for v in views] == ["tens", "ones"] and batches[MAIN].shape[0] == 2
    problems = prep.problems.snapshot()
    assert problems["counter/tens"] is None and problems["counter/ones"] is None
    assert "outside the 128x64 frame" in problems["counter/far"]
    wide = Frame(np.zeros((64, 256, 3), np.uint8), "rgb", 0.0, 1)  # the camera's resolution changed
    _, views = prep("counter", wide)
    assert [v.region for v in views] == ["tens", "ones", "far"] and prep.problems.snapshot()["counter/far"] is None
    _, views = prep("counter", Frame(np.zeros((20, 20, 3), np.uint8), "rgb", 0.0, 2))  # every box outside
    assert views == [] and all(prep.problems.snapshot().values())


GOOD = """package: %s
cameras:
  - name: counter
    source: {type: folder, path: /tmp}
""" % EXAMPLE_PACKAGE


@pytest.mark.parametrize("extra,field,needle", [
    ("    regions: [{name: a, box: [0, 0, 10, 10]}, {name: a, box: [5, 5, 10, 10]}]\n", "cameras[0]",
     "region names must be unique"),
    ("    regions: [{name: a, box: [0.5, 0, 0.6, 1]}]\n    region_units: relative\n", "cameras[0]",
     "x + width <= 1"),
    ("    regions: [{name: a, box: [0, 0, 0.5, 0.5]}]\n", "cameras[0]", "at least 1x1"),
    ("    regions: [{name: a, box: [0, 0, -4, 10]}]\n", "cameras[0].regions[0].box", "width and height are > 0"),
    ("    regions: [{name: a, box: [0, 0, 10]}]\n", "cameras[0].regions[0].box", "4 numbers, got 3"),
    ("    regions: [{name: a/b, box: [0, 0, 10, 10]}]\n", "cameras[0].regions[0].name", "pattern"),
    ("    regions: [{name: a, box: [0, 0, 10, 10], modle: x}]\n", "cameras[0].regions[0].modle", "unknown field"),
    ("    regions: [{name: a, box: [0, 0, 10, 10], model: nowhere}]\n", "cameras[0].regions[0].model",
     "not a model package"),
    ("    region_units: inches\n", "cameras[0].region_units", "pixels"),
    ("  - name: counter__a\n    source: {type: folder, path: /tmp}\n    regions: []\n"
     "    region_sample_frame: 0\n", None, None),  # fine on its own: the next case makes it collide
])
def test_region_config_errors_name_the_field(tmp_path, extra, field, needle):
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD + extra)
    if field is None:
        assert load_config(str(path)).cameras[1].name == "counter__a"
        return
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert err.value.field == field and needle in str(err.value), (err.value.field, str(err.value))


def test_a_camera_may_not_take_the_devices_own_topics_nor_share_an_entity_with_a_region(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD.replace("name: counter", "name: model"))
    with pytest.raises(ConfigError, match="must not be named model"):
        load_config(str(path))
    path.write_text(GOOD + "    regions: [{name: a, box: [0, 0, 10, 10]}]\n"
                    "  - name: counter__a\n    source: {type: folder, path: /tmp}\n")
    with pytest.raises(ConfigError, match=r"would be one Home Assistant entity \(counter__a\)"):
        load_config(str(path))


def test_a_regions_own_package_is_resolved_against_the_config_folder_and_thresholds_may_name_its_labels(tmp_path):
    import shutil

    shutil.copytree(EXAMPLE_PACKAGE, str(tmp_path / "door"))
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD + "    regions: [{name: a, box: [0, 0, 10, 10], model: door}]\n"
                    "thresholds: {per_class: {seven: 0.5}}\n")
    cfg = load_config(str(path))
    assert cfg.cameras[0].regions[0].model == str(tmp_path / "door")
    path.write_text(GOOD + "    regions: [{name: a, box: [0, 0, 10, 10], model: door}]\n"
                    "thresholds: {per_class: {sevn: 0.5}}\n")
    with pytest.raises(ConfigError, match="among the labels of %s or %s" % (EXAMPLE_PACKAGE, tmp_path / "door")):
        load_config(str(path))
