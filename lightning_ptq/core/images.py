"""Reading one image file, with an error that names the file when it is not a readable image."""
from __future__ import annotations

import os

from PIL import Image

from .errors import UserError


class UnreadableImageError(UserError, ValueError):
    """An image file exists but cannot be decoded (truncated, corrupt, not an image)."""


def read_rgb(path: str | os.PathLike, what: str = "") -> Image.Image:
    """The image at ``path`` as RGB, fully decoded; :class:`UnreadableImageError` naming the file
    (and ``what``, e.g. ``image id 7 of split 'val'``) when it cannot be."""
    try:
        with Image.open(path) as file:
            return file.convert("RGB")  # decodes every pixel: a truncated file fails here, not later
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise UnreadableImageError(
            f"Image file {path}{f' ({what})' if what else ''} is not a readable image ({type(err).__name__}: {err}). "
            f"Replace it with a valid image, or remove it from the data (its entry in the annotation file)."
        ) from None
