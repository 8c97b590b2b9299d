"""From image bytes to a height grid: decode, luminance heightmap, resample.

Heights are grayscale luminance in [0, 1] (Rec. 601 weights), so black is the ground
and white the top. Transparent pixels are composited over black: what is not there
has no height. 16-bit grayscale keeps its full precision.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps

from raypipe.exceptions import PermanentError, reason

#: What Pillow's format plugins raise on bytes they cannot make sense of.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)
#: Rec. 601 luma weights in thousandths, so the weighted sum stays exact in integers.
LUMA_WEIGHTS = (299, 587, 114)
#: Pixels converted at a time (whole rows, at least one), which bounds the temporary arrays
#: of a large image however wide it is (256 rows of a 64 M × 1 image would be all of it).
BAND_PIXELS = 1 << 20
#: Modes holding one channel of more than 8 bits, with the value that means white.
WIDE_GRAY_MAX = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image in ``data``, opened but not decoded: its size and mode come from the
    header, so what decoding it will take can be judged before any pixel is decoded.

    The pixel count is checked against ``max_pixels`` here. Pillow's own decompression-bomb
    check (``Image.MAX_IMAGE_PIXELS``) is a process-wide setting: its warning is silenced
    because ``max_pixels`` is the limit that counts here, and its error (images over twice
    Pillow's limit) is reported as over the limit too. Unreadable bytes are a
    :class:`PermanentError`.
    """
    with _readable(max_pixels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise PermanentError(
                f"payload.image: {width}×{height} is {width * height} pixels, over the limit"
                f" of {max_pixels} pixels (mesh_max_pixels)"
            )
        return image


def load_image(image: Image.Image, max_pixels: int) -> Image.Image:
    """Decode an image from :func:`open_image` and turn it upright (EXIF orientation)."""
    with _readable(max_pixels):
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """The image in ``data``, decoded and upright: :func:`open_image`, then :func:`load_image`."""
    return load_image(open_image(data, max_pixels), max_pixels)


@contextlib.contextmanager
def _readable(max_pixels: int) -> Iterator[None]:
    try:
        yield
    except Image.DecompressionBombError:
        raise PermanentError(
            f"payload.image: too many pixels, over the limit of {max_pixels} pixels"
            f" (mesh_max_pixels) or Pillow's {Image.MAX_IMAGE_PIXELS} (Image.MAX_IMAGE_PIXELS)"
        ) from None
    except DECODE_ERRORS as exc:
        raise PermanentError(f"payload.image: not a readable image ({reason(exc)})") from None


def stored_bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel Pillow keeps for a decoded image of ``mode``: one for one-band 8-bit
    (and 1-bit) modes, two for 16-bit grayscale, four for everything else (Pillow stores
    every multi-band mode as four bytes a pixel)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def band_rows(width: int) -> int:
    """Image rows converted at a time by :func:`luminance`: about ``BAND_PIXELS`` pixels."""
    return max(1, BAND_PIXELS // max(1, width))


def luminance(image: Image.Image) -> np.ndarray:
    """Grayscale heights in [0, 1] as a float32 (rows, cols) array, for any Pillow mode.

    Converted a band of rows at a time (:func:`band_rows`), so a large colour image never
    exists as a whole in a wider type: the peak is the decoded image plus the float32
    result plus one band's temporaries.
    """
    width, height = image.size
    heights = np.empty((height, width), dtype=np.float32)
    step = band_rows(width)
    for top in range(0, height, step):
        bottom = min(height, top + step)
        heights[top:bottom] = _band_luminance(image.crop((0, top, width, bottom)))
    return heights


def _band_luminance(image: Image.Image) -> np.ndarray:
    if image.mode in WIDE_GRAY_MAX:
        values = np.asarray(image).astype(np.float32)
        return np.clip(values / WIDE_GRAY_MAX[image.mode], 0.0, 1.0)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if image.mode == "L":
        return np.asarray(image).astype(np.float32) / 255
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB")).astype(np.uint32)
    luma = pixels[..., 0] * LUMA_WEIGHTS[0]
    luma += pixels[..., 1] * LUMA_WEIGHTS[1]
    luma += pixels[..., 2] * LUMA_WEIGHTS[2]
    white = 255 * sum(LUMA_WEIGHTS)
    if has_alpha:
        luma *= pixels[..., 3]
        white *= 255
    return (luma / white).astype(np.float32)


def heightmap(image: Image.Image, height_scale: float) -> np.ndarray:
    """Luminance × ``height_scale``: the height of every pixel, float32 (rows, cols)."""
    heights = luminance(image)
    heights *= np.float32(height_scale)
    return heights


def grid_shape(width: int, height: int, detail_factor: float) -> tuple[int, int]:
    """(cols, rows) of the height grid: each image axis × ``detail_factor``, rounded half
    up, at least 2 so there is at least one cell."""
    return (
        max(2, math.floor(width * detail_factor + 0.5)),
        max(2, math.floor(height * detail_factor + 0.5)),
    )


def resample(heights: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """``heights`` resized to (rows, cols) by area averaging (no aliasing when shrinking);
    returned unchanged when the size already matches."""
    if heights.shape == (rows, cols):
        return heights
    resized = Image.fromarray(heights).resize((cols, rows), Image.Resampling.BOX)
    return np.array(resized, dtype=np.float32)
