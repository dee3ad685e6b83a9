"""Calibration/validation image folders and the readers built on them."""
import os

import numpy as np
import pytest
from PIL import Image

from edgesight.calibration.dataset import ImageFolder, OrtCalibrationReader, label_indices, save_npy
from edgesight.calibration.images import list_images, load_image
from edgesight.calibration.preprocess import PreprocessSpec
from edgesight.errors import ConfigError

from support import EXAMPLE

SPEC = PreprocessSpec(size=(8, 8), color="rgb", layout="nchw")


def make_folder(root, per_class):
    for label, n in per_class.items():
        d = root / label if label else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(str(d / ("img%02d.png" % i)))
    return str(root)


def test_labelled_folder(tmp_path):
    folder = ImageFolder(make_folder(tmp_path, {"cat": 3, "dog": 2}))
    assert folder.labelled and folder.classes == ["cat", "dog"]
    assert len(folder.samples) == 5


def test_folders_starting_with_underscore_or_dot_are_not_classes(tmp_path):
    root = make_folder(tmp_path, {"cat": 2, "_rejected": 2, ".cache": 1})  # a collected dataset's extras
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    folder = ImageFolder(root)
    assert folder.classes == ["cat"] and len(folder.samples) == 2


def test_flat_folder_is_unlabelled(tmp_path):
    folder = ImageFolder(make_folder(tmp_path, {"": 4}))
    assert not folder.labelled
    assert label_indices(folder.samples, ["a"]) is None


def test_stratified_deterministic_sampling(tmp_path):
    folder = ImageFolder(make_folder(tmp_path, {"a": 20, "b": 20, "c": 2}))
    first = folder.sample(9, seed=1)
    assert first == folder.sample(9, seed=1)  # same seed, same images
    assert first != folder.sample(9, seed=2)
    counts = {lbl: sum(1 for s in first if s.label == lbl) for lbl in "abc"}
    assert counts == {"a": 4, "b": 3, "c": 2} or counts == {"a": 3, "b": 4, "c": 2}  # round-robin over classes


def test_fewer_images_than_requested_warns_and_uses_all(tmp_path, caplog):
    folder = ImageFolder(make_folder(tmp_path, {"a": 3}))
    assert len(folder.sample(300)) == 3
    assert "fewer than the 300 requested" in caplog.text


def test_corrupt_images_are_skipped_and_listed(tmp_path):
    root = make_folder(tmp_path, {"a": 2})
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    loaded = ImageFolder(root).load(SPEC)
    assert loaded.tensors.shape == (2, 3, 8, 8)
    assert [os.path.basename(p) for p, _ in loaded.skipped] == ["broken.jpg"]


def test_all_corrupt_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(ConfigError, match="none of the 1 images could be read"):
        ImageFolder(str(tmp_path)).load(SPEC)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no images found"):
        ImageFolder(str(tmp_path))


def test_exif_orientation_is_honoured(tmp_path):
    img = np.zeros((4, 8, 3), np.uint8)  # stored 4 high x 8 wide; red marks the top-left 2x2 block
    img[:2, :2] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(img).save(str(path), exif=exif, quality=100, subsampling=0)
    shown = load_image(str(path))
    assert shown.shape == (8, 4, 3)  # displayed upright: 8 high x 4 wide
    assert shown[0, -1, 0] > 200 and shown[-1, 0, 0] < 50  # the marked corner moved to the top-right


def test_ort_reader_yields_every_batch_then_none():
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    r = OrtCalibrationReader("in", x, batch_size=2)
    got = [r.get_next() for _ in range(4)]
    assert [g["in"].shape[0] for g in got[:3]] == [2, 2, 1] and got[3] is None
    r.rewind()
    assert np.array_equal(r.get_next()["in"], x[:2])
    assert len(r) == 3 and sum(1 for _ in r) == 3


def test_npy_for_tflite_is_nhwc(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    path = save_npy(x, str(tmp_path / "c.npy"), "nchw", "nhwc")
    np.testing.assert_array_equal(np.load(path), x.transpose(0, 2, 3, 1))


def test_example_calibration_split_is_labelled():
    folder = ImageFolder(os.path.join(EXAMPLE, "images", "calib"))
    assert folder.labelled and len(folder.classes) == 10 and len(folder.samples) == 300


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    """The same digit as an 8-bit and a 16-bit PNG gives the same pixels (Pillow's own conversion clipped the
    16-bit one: pixel mean 183 instead of 87)."""
    path = next(p for p, _ in list_images(os.path.join(EXAMPLE, "images", "val")))
    eight = load_image(path)
    gray = eight.mean(axis=2).round().astype(np.uint16)
    Image.fromarray((gray * 257).astype(np.uint16)).save(str(tmp_path / "d16.png"))
    assert Image.open(str(tmp_path / "d16.png")).mode.startswith("I")
    sixteen = load_image(str(tmp_path / "d16.png"))
    assert sixteen.dtype == np.uint8 and sixteen.shape == eight.shape
    assert abs(float(sixteen.mean()) - float(gray.mean())) < 0.5, (sixteen.mean(), gray.mean())


def test_jpegs_decoded_by_opencv_are_the_pixels_pillow_gives(tmp_path):
    """The OpenCV fast path for plain JPEGs must give exactly Pillow's pixels (RGB, grey, odd sizes, the field
    set), and an EXIF-rotated or CMYK JPEG stays with Pillow."""
    import glob

    from PIL import Image

    from edgesight.calibration import images

    pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    made = []
    for i, (mode, size) in enumerate([("RGB", (640, 480)), ("L", (333, 217)), ("RGB", (31, 17)),
                                      ("CMYK", (64, 48))]):
        arr = rng.integers(0, 256, (size[1], size[0], 4 if mode == "CMYK" else 3), dtype=np.uint8)
        img = Image.fromarray(arr[:, :, :4] if mode == "CMYK" else arr, "CMYK" if mode == "CMYK" else "RGB")
        path = str(tmp_path / ("f%d.jpg" % i))
        (img if mode != "L" else img.convert("L")).save(path, quality=80)
        made.append(path)
    field = sorted(glob.glob(os.path.join(EXAMPLE, "images", "field", "test", "*", "*.jpg")))[::25]
    assert len(field) >= 50
    for path in made + field:
        with Image.open(path) as im:
            want = images.to_rgb8(im)
        got = images.load_image(path)
        assert got.dtype == np.uint8 and got.shape == want.shape and np.array_equal(got, want), path
    assert images._cv2_jpeg(made[0]) is not None  # the fast path is really taken for a plain JPEG
