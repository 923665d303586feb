"""Image files for the command line: find them in the paths a user names, and read them. Needs Pillow and numpy only,
so the command checks its inputs before torch is imported and weights are fetched."""
import warnings
from pathlib import Path
from typing import Iterable, List, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ['convert_image', 'find_images', 'read_image']

PathLike = Union[str, Path]

_16_BIT_MAX = 65535


def find_images(paths: Iterable[PathLike]) -> List[Path]:
    """The image files named, and those in the folders named (recursively, by extension), in order.

    Raises FileNotFoundError for a path that does not exist and ValueError when no image is found.
    """
    paths = list(map(Path, paths))
    extensions = set(Image.registered_extensions())
    images = []
    for path in paths:
        if path.is_dir():
            images += sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in extensions)
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f'No such image file or folder: {path}')
    if not images:
        raise ValueError(f'No image files in {", ".join(map(str, paths))}.')
    return images


def _scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image as an 8-bit one ('L'), by the ranges `convert_image` names."""
    values = np.asarray(image, dtype=np.float64)
    low, high = values.min(), values.max()
    if image.mode.startswith('I;16') or (image.mode == 'I' and low >= 0 and high <= _16_BIT_MAX):
        low, high = 0., float(_16_BIT_MAX)
    elif image.mode == 'F' and low >= 0 and high <= 1:
        low, high = 0., 1.
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def convert_image(image: Image.Image, mode: str) -> Image.Image:
    """`image` in Pillow `mode` ('RGB' or 'L'). Pillow's own `convert` clips greyscale values beyond 8 bits to 255,
    which turns a 16-bit scan black and white; those images are scaled to 8 bits first:

    - 16-bit (`I;16`, `I;16B`, ...): 0-65535 onto 0-255 (a 16-bit copy of an 8-bit image, each value times 257, gives
      that image back);
    - 32-bit integer (`I`, as Pillow reads some 16-bit files): as 16-bit when every value lies in 0-65535, else from
      its minimum (black) to its maximum (white);
    - float (`F`): 0-1 onto 0-255 when every value lies in [0, 1], else from its minimum to its maximum.
    An image of one value outside those ranges comes out black.
    """
    if image.mode in ('I', 'F') or image.mode.startswith('I;16'):
        image = _scaled_to_8_bits(image)
    return image.convert(mode)


def read_image(path: Path, mode: str) -> Image.Image:
    """The image at `path` in Pillow `mode` ('RGB' or 'L'), greyscale beyond 8 bits scaled as `convert_image` says.

    ValueError naming the file when it is not an image, or has more pixels than Pillow reads (over twice
    `PIL.Image.MAX_IMAGE_PIXELS`: a possible decompression bomb). One between that limit and twice it is read without
    Pillow's warning: it is resized for the model anyway.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return convert_image(image, mode)
    except Image.DecompressionBombError as e:
        raise ValueError(f'{path} is too large to read: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, which Pillow '
                         f'refuses as a possible decompression bomb (downscale it first).') from e
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f'{path} is not an image Pillow can read ({type(e).__name__}).') from e
