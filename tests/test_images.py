"""Every mode and format becomes the model's input the same, predictable way."""

import numpy as np
import pytest
from PIL import Image

from conftest import write_mixed
from vaepipe.images import ImageError, ImageSpec, load_array, open_image

GREY28 = ImageSpec(28, 1, background=0)
RGB32 = ImageSpec(32, 3, background=0)


@pytest.fixture
def mixed(tmp_path):
    return write_mixed(tmp_path / "mixed")


@pytest.mark.parametrize("kind", ["png_rgb", "jpeg", "webp", "bmp", "tiff", "gif", "rgba", "grey", "palette", "grey16", "cmyk"])
@pytest.mark.parametrize("spec", [GREY28, RGB32])
def test_every_readable_format_gives_the_model_shape(mixed, kind, spec):
    arr = load_array(mixed[kind], spec)
    assert arr.dtype == np.uint8
    assert arr.shape == (spec.channels, spec.size, spec.size)


@pytest.mark.parametrize("kind", ["corrupt", "text", "empty"])
def test_bad_files_raise_a_readable_error(mixed, kind):
    with pytest.raises(ImageError) as err:
        load_array(mixed[kind], GREY28)
    assert str(err.value)  # a reason a person can read


def test_transparent_pixels_take_the_background(mixed):
    for background in (0, 255):
        arr = load_array(mixed["rgba"], ImageSpec(30, 3, background))
        assert tuple(arr[:, 0, 0]) == (background,) * 3  # corner was fully transparent red
        assert tuple(arr[:, 15, 15]) == (0, 255, 0)  # opaque green square kept


def test_sixteen_bit_is_scaled_to_eight(mixed):
    assert load_array(mixed["grey16"], ImageSpec(16, 1)).min() == 255


def test_gif_uses_the_first_frame(mixed):
    first = load_array(mixed["gif"], ImageSpec(20, 1))
    frame0 = np.asarray(Image.open(mixed["gif"]).convert("L"))
    assert np.array_equal(first[0], frame0)


def test_letterbox_keeps_aspect_ratio(tmp_path):
    # A white 40x10 bar becomes a 28x7 bar centred on black padding, not a stretched square.
    p = tmp_path / "wide.png"
    Image.new("L", (40, 10), 255).save(p)
    arr = load_array(p, GREY28)[0]
    rows_lit = np.nonzero(arr.max(axis=1) > 128)[0]
    assert 6 <= len(rows_lit) <= 8
    assert rows_lit.min() >= 10 and rows_lit.max() <= 17
    assert arr[:, 0].max() > 128 and arr[0].max() == 0


def test_exif_orientation_is_applied(tmp_path):
    # Stored sideways (bright left half) with EXIF "rotate 90 CW": upright it is bright on top.
    stored = np.zeros((40, 40), np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must rotate 90 degrees clockwise
    p = tmp_path / "rotated.jpg"
    Image.fromarray(stored, "L").save(p, exif=exif, quality=95)
    arr = load_array(p, ImageSpec(40, 1))[0].astype(int)
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50


def test_pixel_limit_rejects_before_decoding(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (2000, 2000)).save(p)
    with pytest.raises(ImageError, match="pixel limit"):
        open_image(p, max_pixels=1_000_000)
