"""Golden values for THE preprocessing implementation; every expected number below is worked out by hand."""
import numpy as np
import pytest
from pydantic import ValidationError

from edgesight.calibration.preprocess import (PreprocessSpec, preprocess, preprocess_batch, resize_bilinear,
                                              resize_bilinear_cv2, resize_bilinear_numpy, to_layout)
from edgesight.errors import ImageError


@pytest.fixture(params=["numpy", "opencv"])
def resize(request):
    """Each golden value holds for both resize implementations: numpy's, and OpenCV's where it is installed."""
    if request.param == "numpy":
        return resize_bilinear_numpy
    cv2 = pytest.importorskip("cv2")
    return lambda img, h, w: resize_bilinear_cv2(cv2, np.asarray(img), h, w)


def spec(**kw):
    base = dict(size=(4, 4), resize="stretch", color="gray", scale=1.0, mean=(0.0,), std=(1.0,), layout="nhwc")
    base.update(kw)
    return PreprocessSpec(**base)


def test_bilinear_upscale_row_uses_half_pixel_centres(resize):
    # dst x = (i + 0.5) * 0.5 - 0.5 -> -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]
    out = resize(np.array([[[0.0], [100.0]]]), 1, 4)
    assert out[0, :, 0].tolist() == [0.0, 25.0, 75.0, 100.0]


def test_bilinear_upscale_2x2_to_4x4(resize):
    src = np.array([[0, 100], [200, 255]], dtype=np.uint8)[:, :, None]
    out = resize(src, 4, 4)[:, :, 0]
    np.testing.assert_allclose(out[0], [0, 25, 75, 100])
    np.testing.assert_allclose(out[3], [200, 213.75, 241.25, 255])
    np.testing.assert_allclose(out[1], [50, 72.1875, 116.5625, 138.75])  # 0.75 * row0 + 0.25 * row3
    assert out.dtype == np.float32


def test_bilinear_downscale_averages_neighbours(resize):
    # dst x = (i + 0.5) * 2 - 0.5 -> 0.5, 2.5
    out = resize(np.array([[[0.0], [10.0], [20.0], [30.0]]]), 1, 2)
    assert out[0, :, 0].tolist() == [5.0, 25.0]


SIZES = [((480, 640), (168, 224)), ((480, 640), (224, 224)), ((1080, 1920), (126, 224)), ((100, 100), (50, 50)),
         ((7, 9), (224, 224)), ((33, 47), (16, 23)), ((1, 1), (5, 5)), ((5, 1), (224, 224)), ((3, 5), (3, 10)),
         ((64, 64), (64, 64))]


@pytest.mark.parametrize("src_hw,dst_hw", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_opencv_resize_gives_the_numpy_numbers(src_hw, dst_hw, channels):
    """The agent resizes with OpenCV where it is installed, the converter perhaps without it: the two must agree
    (docs: within 1e-4 on the 0-255 scale), down, up, odd sizes, one pixel, same size; never rounded to uint8."""
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(sum(src_hw) + channels).integers(0, 256, src_hw + (channels,), dtype=np.uint8)
    ours, theirs = resize_bilinear_numpy(img, *dst_hw), resize_bilinear_cv2(cv2, img, *dst_hw)
    assert theirs.shape == ours.shape == dst_hw + (channels,) and theirs.dtype == np.float32
    assert np.abs(theirs - ours).max() <= 1e-4
    assert np.array_equal(resize_bilinear(img, *dst_hw), theirs)  # the public function takes OpenCV's path
    same = img.astype(np.float32)
    assert not np.shares_memory(resize_bilinear_cv2(cv2, same, *src_hw), same)  # a copy, never the caller's array


def test_letterbox_pads_top_and_bottom_with_pad_value():
    img = np.arange(8, dtype=np.uint8).reshape(2, 4)  # 2 high, 4 wide -> fits 4x4 at scale 1
    out = preprocess(img, spec(resize="letterbox", pad_value=7))[:, :, 0]
    assert out[0].tolist() == [7, 7, 7, 7]
    assert out[1].tolist() == [0, 1, 2, 3]
    assert out[2].tolist() == [4, 5, 6, 7]
    assert out[3].tolist() == [7, 7, 7, 7]


def test_letterbox_scales_to_fit():
    img = np.full((2, 8), 50, dtype=np.uint8)  # scale min(4/2, 4/8) = 0.5 -> 1x4, top = (4 - 1) // 2 = 1
    out = preprocess(img, spec(resize="letterbox"))[:, :, 0]
    assert out[1].tolist() == [50, 50, 50, 50]
    assert out[0].tolist() == out[2].tolist() == out[3].tolist() == [0, 0, 0, 0]


def test_center_crop_cuts_the_middle_rows():
    img = np.array([[1, 1], [2, 2], [3, 3], [4, 4]], dtype=np.uint8)  # 4 high, 2 wide -> 2x2, scale 1
    out = preprocess(img, spec(size=(2, 2), resize="center_crop"))[:, :, 0]
    assert out.tolist() == [[2, 2], [3, 3]]


def test_stretch_ignores_aspect_ratio():
    img = np.array([[10, 30]], dtype=np.uint8)  # 1x2 -> 2x1: x = 0.5 -> mean of both
    out = preprocess(img, spec(size=(2, 1), resize="stretch"))[:, :, 0]
    assert out.tolist() == [[20.0], [20.0]]


def test_scale_mean_std_per_channel():
    s = PreprocessSpec(size=(1, 1), resize="stretch", color="rgb", scale=1 / 255.0,
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), layout="nchw")
    out = preprocess(np.array([[[255, 0, 128]]], dtype=np.uint8), s)
    assert out.shape == (3, 1, 1)
    # (1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128/255 - 0.406) / 0.225
    np.testing.assert_allclose(out[:, 0, 0], [2.2489083, -2.0357143, 0.42649236], rtol=1e-6)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("color,mean,std", [("rgb", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                            ("bgr", (103.9, 116.8, 123.7), (1.0, 1.0, 1.0)),
                                            ("rgb", (0.5,), (0.5,)), ("gray", (0.1,), (0.3,))])
def test_normalisation_gives_the_formulas_numbers_bit_for_bit(layout, color, mean, std):
    """Normalising one channel (or one row) at a time is only faster: the numbers are those of
    ``(resized * scale - mean) / std`` computed as ``resized * gain + offset`` over the whole image."""
    from edgesight.calibration.preprocess import _convert_color, _fit

    img = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    sp = PreprocessSpec(size=(24, 20), resize="letterbox", color=color, mean=mean, std=std, layout=layout,
                        scale=1.0 / 255 if max(mean) < 1 else 1.0, pad_value=114)
    ref = _convert_color(_fit(img.astype(np.float32), sp), "rgb", color)
    sd = np.asarray(std, dtype=np.float32)
    want = ref * (np.float32(sp.scale) / sd).reshape(1, 1, -1) + (-np.asarray(mean, dtype=np.float32) / sd)
    if layout == "nchw":
        want = want.transpose(2, 0, 1)
    got = preprocess(img, sp)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
    assert np.array_equal(got, want)


def test_bgr_model_gets_channels_swapped():
    px = np.array([[[10, 20, 30]]], dtype=np.uint8)
    out = preprocess(px, spec(size=(1, 1), color="bgr"))
    assert out[0, 0].tolist() == [30, 20, 10]
    # an OpenCV (BGR) frame for an RGB model is swapped too, for a BGR model it is not
    assert preprocess(px, spec(size=(1, 1), color="rgb"), input_color="bgr")[0, 0].tolist() == [30, 20, 10]
    assert preprocess(px, spec(size=(1, 1), color="bgr"), input_color="bgr")[0, 0].tolist() == [10, 20, 30]


def test_gray_uses_bt601_luma():
    out = preprocess(np.array([[[100, 200, 50]]], dtype=np.uint8), spec(size=(1, 1), color="gray"))
    assert out.shape == (1, 1, 1)
    assert out[0, 0, 0] == pytest.approx(0.299 * 100 + 0.587 * 200 + 0.114 * 50)  # 153.0


def test_gray_input_for_rgb_model_is_replicated():
    out = preprocess(np.array([[9]], dtype=np.uint8), spec(size=(1, 1), color="rgb"))
    assert out[0, 0].tolist() == [9, 9, 9]


def test_alpha_channel_is_dropped():
    out = preprocess(np.array([[[1, 2, 3, 255]]], dtype=np.uint8), spec(size=(1, 1), color="rgb"))
    assert out[0, 0].tolist() == [1, 2, 3]


def test_layouts_and_batch():
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    nchw = PreprocessSpec(size=(8, 6), color="rgb", layout="nchw")
    nhwc = PreprocessSpec(size=(8, 6), color="rgb", layout="nhwc")
    assert preprocess(img, nchw).shape == (3, 8, 6)
    assert preprocess(img, nhwc).shape == (8, 6, 3)
    batch = preprocess_batch([img, img], nchw)
    assert batch.shape == (2, 3, 8, 6) == nchw.input_shape(2)
    assert batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(to_layout(batch, "nchw", "nhwc"), preprocess_batch([img, img], nhwc))


@pytest.mark.parametrize("bad", [
    dict(mean=(0.1, 0.2)),         # 2 values for 3 channels
    dict(resize="squash"),
    dict(color="hsv"),
    dict(layout="chwn"),
    dict(size=(0, 4)),
    dict(std=(0.0,)),
    dict(unknown_key=1),
])
def test_spec_rejects_bad_values(bad):
    base = dict(size=(4, 4), color="rgb")
    base.update(bad)
    with pytest.raises(ValidationError):
        PreprocessSpec(**base)


def test_bad_image_shape_is_an_image_error():
    with pytest.raises(ImageError, match="shape"):
        preprocess(np.zeros((4, 4, 2), dtype=np.uint8), spec())
