"""Texture baking without an OpenGL context: xatlas UV atlas + the core rasteriser + a colour field or vertex colours.

UV convention (as :class:`monorecon.core.mesh.Mesh`): ``u`` to the right, ``v`` up from the bottom row of the texture
image; texture row 0 is the top of the image.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .checks import TEXTURE_RESOLUTION_RANGE, check_int
from .mesh import Mesh
from .raster import rasterize

ColourFn = Callable[[torch.Tensor], torch.Tensor]


def unwrap_uv(mesh: Mesh, resolution: int | None = None, padding: int = 4) -> Mesh:
    """Split the mesh at UV seams and give every vertex a UV coordinate in [0, 1]^2 (xatlas).

    xatlas runs in a child process (:mod:`monorecon.core._unwrap_worker`): it crashes on some meshes, which then
    get an error instead of ending this process, and it holds Python's global lock while it works, which would stop
    this process's other threads (a server's) for seconds.

    Args:
        mesh: the mesh to unwrap.
        resolution: texture side the atlas is packed for (None: xatlas picks one).
        padding: empty atlas texels kept around every chart (plus one for bilinear filtering), so that texture
            filtering and dilation never mix colours of neighbouring charts.

    Returns:
        A new mesh whose ``uvs`` are per vertex (V', 2); vertex colours are carried over.

    Raises:
        ValueError: xatlas failed on the mesh (a crash, named by its signal).
    """
    with tempfile.TemporaryDirectory(prefix="monorecon-unwrap-") as folder:
        source, target = Path(folder) / "mesh.npz", Path(folder) / "atlas.npz"
        np.savez(
            source,
            verts=mesh.verts.detach().cpu().numpy().astype(np.float32),
            faces=mesh.faces.detach().cpu().numpy().astype(np.uint32),
            resolution=resolution or 0,
            padding=padding,
        )
        worker = Path(__file__).with_name("_unwrap_worker.py")
        done = subprocess.run([sys.executable, str(worker), str(source), str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            reason = (
                f"crashed ({signal.Signals(-done.returncode).name})"
                if done.returncode < 0
                else (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            )
            raise ValueError(
                f"UV unwrapping (xatlas) failed on this mesh of {mesh.num_faces} faces: {reason}; decimating it first "
                "(--target-faces) changes what xatlas is given"
            )
        with np.load(target) as atlas:
            vmapping, indices, uvs = atlas["vmapping"], atlas["indices"], atlas["uvs"]
    vmapping = torch.from_numpy(vmapping.astype(np.int64))
    colours = None if mesh.vertex_colors is None else mesh.vertex_colors[vmapping]
    return Mesh(
        verts=mesh.verts[vmapping],
        faces=torch.from_numpy(indices.astype(np.int64)),
        vertex_colors=colours,
        uvs=torch.from_numpy(uvs.astype(np.float32)),
    )


def rasterize_uv_positions(mesh: Mesh, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface position of every texel covered by the UV atlas.

    Returns:
        positions: (R, R, 3) world positions (zeros where uncovered); row 0 is the top (v = 1).
        covered: (R, R) bool.
    """
    return rasterize_uv_attributes(mesh, mesh.verts.to(torch.float32), resolution)


def rasterize_uv_attributes(mesh: Mesh, attributes: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vertex attributes interpolated (barycentric) at every texel covered by the UV atlas.

    Args:
        mesh: a mesh with ``uvs``.
        attributes: (V, C) values at the mesh's vertices (positions, colours...).
        resolution: texture side R in texels.

    Returns:
        values: (R, R, C) float32, zeros where uncovered; row 0 is the top (v = 1).
        covered: (R, R) bool.
    """
    if mesh.uvs is None:
        raise ValueError("mesh has no UVs: call unwrap_uv first")
    uv = mesh.uvs.to(torch.float32)
    verts_ndc = torch.cat([uv * 2.0 - 1.0, torch.ones_like(uv[:, :1])], dim=-1)[None]
    fragments = rasterize(verts_ndc, mesh.faces, resolution, resolution, perspective_correct=False)
    face_index = fragments.face_index[0, ..., 0]
    covered = face_index >= 0
    bary = fragments.bary[0, ..., 0, :]
    face_values = attributes.to(torch.float32)[mesh.faces[face_index.clamp_min(0)]]  # (R, R, 3, C)
    values = (bary[..., None] * face_values).sum(dim=-2) * covered[..., None]
    return values, covered


def dilate_texture(texture: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Fill uncovered texels with the colour of the nearest covered texel, so chart seams and mip-maps do not bleed.

    Args:
        texture: (R, R, 3) colours; covered: (R, R) bool.
    """
    if covered.all() or not covered.any():
        return texture
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return texture[rows, cols]


def bake_texture(
    mesh: Mesh, colour_fn: ColourFn | None = None, resolution: int = 1024, chunk_size: int = 262144
) -> Mesh:
    """UV-unwrap ``mesh`` and bake ``colour_fn`` (or the mesh's own vertex colours) into a texture image.

    Args:
        mesh: mesh in world coordinates.
        colour_fn: (N, 3) world points -> (N, 3) colours in [0, 1]; None: the mesh's vertex colours, interpolated
            across each face as renderers do.
        resolution: texture side in texels.
        chunk_size: points per ``colour_fn`` call.

    Returns:
        A mesh with per-vertex ``uvs`` and a (R, R, 3) ``texture``; vertex colours are kept.

    Raises:
        ValueError: a resolution outside ``TEXTURE_RESOLUTION_RANGE`` ([64, 8192]), or no ``colour_fn`` for a mesh
            without vertex colours.
    """
    check_int(resolution, "texture resolution", *TEXTURE_RESOLUTION_RANGE)
    if colour_fn is None and mesh.vertex_colors is None:
        raise ValueError("nothing to bake: the mesh has no vertex colours")
    unwrapped = unwrap_uv(mesh, resolution)
    if colour_fn is None:
        texels, covered = rasterize_uv_attributes(unwrapped, unwrapped.vertex_colors, resolution)
        colours = texels[covered].clamp(0, 1)
    else:
        positions, covered = rasterize_uv_positions(unwrapped, resolution)
        flat = positions[covered]
        colours = torch.empty(flat.shape[0], 3)
        for start in range(0, flat.shape[0], chunk_size):
            colours[start : start + chunk_size] = colour_fn(flat[start : start + chunk_size]).float().clamp(0, 1)
    texture = np.zeros((resolution, resolution, 3), dtype=np.float32)
    texture[covered.numpy()] = colours.numpy()
    texture = dilate_texture(texture, covered.numpy())
    return dataclasses.replace(unwrapped, texture=torch.from_numpy(texture))
