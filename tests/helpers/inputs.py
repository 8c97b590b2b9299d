"""Small job inputs for tests over HTTP: an image whose mesh size is known, and a short
document."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: A short English document: a few sentences for chunks, keywords and a summary.
DOCUMENT = (
    "Beekeeping starts with a healthy colony. A hive holds one queen, a few hundred drones"
    " and tens of thousands of worker bees. In spring the colony grows quickly and the"
    " beekeeper adds boxes to the hive. Honey is harvested in late summer, and enough of it"
    " must stay in the hive for the winter."
)


def png(width: int, height: int) -> bytes:
    """A left-to-right grey gradient, as PNG: at ``detail_factor`` 1 its mesh has one
    vertex per pixel."""
    pixels = np.tile(np.linspace(0, 200, width, dtype=np.uint8), (height, 1))
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()
