"""Image files for the command line: find them in the paths a user names, and read them. Needs Pillow only, so the
command checks its inputs before torch is imported and weights are fetched."""
from pathlib import Path
from typing import Iterable, List, Union

from PIL import Image, UnidentifiedImageError

__all__ = ['find_images', 'read_image']

PathLike = Union[str, Path]


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


def read_image(path: Path, mode: str) -> Image.Image:
    """The image at `path` in Pillow `mode` ('RGB' or 'L'); ValueError naming the file when it is not an image."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f'{path} is not an image Pillow can read ({type(e).__name__}).') from e
