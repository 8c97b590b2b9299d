"""Image → heightmap mesh, as pure functions the ``mesh.from_image`` processor strings
together: ``heightmap`` (decode, luminance, resample), ``grid`` (the coordinate frame,
triangulation, bands and stitching), ``smoothing``, ``export`` and ``thumbnail``.

This module itself imports nothing heavy (trimesh alone takes about a second), so
payload models can use its vocabulary cheaply.
"""

from __future__ import annotations

from typing import Literal, get_args

MeshFormat = Literal["glb", "ply", "stl", "obj"]
#: Every format ``mesh.from_image`` can export.
FORMATS: tuple[MeshFormat, ...] = get_args(MeshFormat)
