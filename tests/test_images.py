"""Reading images for the command line: greyscale beyond 8 bits is scaled, not clipped, and an image too large for
Pillow is one error naming the file."""
import warnings

import numpy as np
import pytest
from PIL import Image

from timm_t2t.images import convert_image, read_image


@pytest.fixture
def grey() -> np.ndarray:
    """An 8-bit greyscale picture using the whole range, 0 and 255 included."""
    values = np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8)
    values[0, :2] = 0, 255
    return values


def _as_mode(values: np.ndarray, mode: str) -> Image.Image:
    """`values` as a Pillow image of `mode` holding them as they are (no scaling)."""
    dtype = {'I;16': '<u2', 'I;16L': '<u2', 'I;16B': '>u2', 'I': '<i4', 'F': '<f4'}[mode]
    return Image.frombytes(mode, values.shape[::-1], values.astype(dtype).tobytes())


@pytest.mark.parametrize('mode', ['I;16', 'I;16L', 'I;16B', 'I'])
@pytest.mark.parametrize('output', ['RGB', 'L'])
def test_a_16_bit_copy_of_an_8_bit_image_reads_as_that_image(grey, mode, output):
    copy = _as_mode(grey.astype(np.int64) * 257, mode)  # 0-255 onto 0-65535, as a 16-bit scan of it holds it
    expected = Image.fromarray(grey).convert(output)
    np.testing.assert_array_equal(np.asarray(convert_image(copy, output)), np.asarray(expected))


def test_a_16_bit_png_is_read_as_its_8_bit_copy(grey, tmp_path):
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / 'deep.png')
    Image.fromarray(grey).save(tmp_path / 'plain.png')
    assert Image.open(tmp_path / 'deep.png').mode.startswith('I')
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / 'deep.png', 'RGB')),
                                  np.asarray(read_image(tmp_path / 'plain.png', 'RGB')))


def test_floats_in_0_1_are_scaled_to_255(grey):
    image = convert_image(_as_mode(grey / 255, 'F'), 'L')
    np.testing.assert_array_equal(np.asarray(image), grey)


@pytest.mark.parametrize('mode, scale, offset', [('F', 0.37, -12.5), ('I', 1000, -70_000), ('I', 300, 0)])
def test_values_outside_the_known_ranges_go_from_their_minimum_to_their_maximum(grey, mode, scale, offset):
    image = convert_image(_as_mode(grey.astype(np.float64) * scale + offset, mode), 'L')  # min-max gives grey back
    np.testing.assert_array_equal(np.asarray(image), grey)


@pytest.mark.parametrize('mode, value', [('F', 7.5), ('I', -3)])
def test_one_value_outside_the_known_ranges_is_black(mode, value):
    image = convert_image(_as_mode(np.full((4, 4), value), mode), 'RGB')
    assert not np.asarray(image).any()


def test_more_pixels_than_pillow_reads_is_one_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    Image.new('L', (50, 50)).save(tmp_path / 'huge.png')  # 2,500 pixels: over twice the limit
    with pytest.raises(ValueError) as error:
        read_image(tmp_path / 'huge.png', 'RGB')
    assert str(error.value) == (f'{tmp_path / "huge.png"} is too large to read: over 2,000 pixels, which Pillow '
                                f'refuses as a possible decompression bomb (downscale it first).')


def test_a_large_image_pillow_reads_is_read_without_its_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    Image.new('L', (40, 40), color=9).save(tmp_path / 'large.png')  # 1,600 pixels: over the limit, under twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        image = read_image(tmp_path / 'large.png', 'RGB')
    assert not caught and image.size == (40, 40) and image.getpixel((3, 3)) == (9, 9, 9)
