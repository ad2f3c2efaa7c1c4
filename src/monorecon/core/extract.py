"""Isosurface extraction (marching cubes over a queried field) and mesh clean-up.

Conventions:

* The field is a density: points with ``density > threshold`` are **inside**; a value equal to the threshold counts as
  outside. Faces are oriented outward (right-hand normals point from inside to outside).
* ``resolution`` is the number of grid **samples** per axis (``resolution - 1`` cells), spaced evenly from the
  minimum to the maximum corner of ``bounds`` inclusive (as in TripoSR, whose 256 means 256^3 queries).
* The grid is processed in blocks of ``block_size`` cells per side that share their border samples; every vertex
  lies on a grid edge, so the copies of a vertex made by the blocks sharing its edge are welded by edge and the
  mesh equals a single pass over the whole grid. Memory stays bounded by the block size whatever the resolution.
* Each sample of the fine grid is queried once (blocks pass their border planes on), so blocks agree exactly even
  if the field's values depend on how points are batched.
* Vertex order is deterministic and independent of the block size: vertices sorted by the grid edge they lie on
  (lower end point x, y, z, then edge axis); faces start at their smallest vertex index (orientation kept) and are
  sorted. Vertices that coincide on a sample (where a sample equals the threshold, or lies within float32 rounding of
  it) are merged and faces made degenerate by that are dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import mcubes
import numpy as np
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from .checks import check_int, check_tensor
from .mesh import Mesh

__all__ = ["MAX_RESOLUTION", "MAX_SMOOTH_ITERATIONS", "cleanup_mesh", "extract_isosurface"]

MAX_RESOLUTION = 2048
#: Upper bound of ``cleanup_mesh(smooth_iterations=...)`` (far beyond any useful value: it bounds the run time).
MAX_SMOOTH_ITERATIONS = 10000
#: Decimation stops once the face count is at most this fraction above ``cleanup_mesh(target_faces=...)``.
DECIMATE_TOLERANCE = 0.02
#: Most simplification passes of one decimation (each after the first decimates what earlier passes left).
_DECIMATE_PASSES = 6
QueryFn = Callable[[torch.Tensor], torch.Tensor]


def extract_isosurface(
    query_fn: QueryFn,
    resolution: int,
    threshold: float,
    bounds: float | Sequence[float] | Sequence[Sequence[float]] = 1.0,
    *,
    method: str = "dense",
    block_size: int = 128,
    coarse_resolution: int | None = None,
    chunk_size: int = 262_144,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Mesh:
    """Mesh of the surface ``density == threshold`` of a field, by marching cubes on a regular grid.

    Args:
        query_fn: maps points (N, 3) float32 (world, on ``device``) to densities (N,) or (N, 1); called under
            ``torch.no_grad()`` with at most ``chunk_size`` points at a time.
        resolution: grid samples per axis, 2 to :data:`MAX_RESOLUTION`.
        threshold: iso level; ``density > threshold`` is inside.
        bounds: the box sampled: ``r`` for the cube [-r, r]^3, ``(lo, hi)`` for [lo, hi]^3, or
            ``((x0, y0, z0), (x1, y1, z1))`` for a box (world frame).
        method: ``"dense"`` queries every sample. ``"coarse_to_fine"`` first queries a coarse grid (a subset of the
            samples, about ``coarse_resolution`` per axis), finds the coarse cells whose corner values straddle the
            threshold, dilates them by one cell and queries only the samples of those cells; the other samples take
            the value of a corner of their coarse cell (on the correct side), so the surface is the dense one except
            where the coarse grid misses a feature thinner than a coarse cell.
        block_size: cells per block side (bounds memory: about ``block_size^3`` samples at once).
        coarse_resolution: coarse samples per axis for ``"coarse_to_fine"``; default about ``resolution / 4``.
        chunk_size: most points per ``query_fn`` call.
        device: where the query points are created.
        progress: show a progress bar over the blocks.

    Returns:
        The mesh (float32 vertices in world coordinates, outward faces, no colours).

    Raises:
        ValueError: on bad arguments, a query returning a wrong shape or NaN, or when the field does not cross the
            threshold anywhere in the box.
    """
    resolution = check_int(resolution, "resolution", 2, MAX_RESOLUTION)
    block_size = check_int(block_size, "block_size", 1, 1024)
    chunk_size = check_int(chunk_size, "chunk_size", 1, 1 << 31)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"threshold must be a finite number, got {threshold!r}") from exc
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if method not in ("dense", "coarse_to_fine"):
        raise ValueError(f"method must be 'dense' or 'coarse_to_fine', got {method!r}")
    if not callable(query_fn):
        raise ValueError("query_fn must be callable")
    low, high = _parse_bounds(bounds)
    axes = [low[a] + (high[a] - low[a]) * np.arange(resolution) / (resolution - 1) for a in range(3)]
    field = _Field(query_fn, chunk_size, torch.device(device), threshold)

    refine = None
    if method == "coarse_to_fine":
        if coarse_resolution is None:
            coarse_resolution = math.ceil((resolution - 1) / 4) + 1  # every 4th sample
        coarse_resolution = check_int(coarse_resolution, "coarse_resolution", 2, resolution)
        refine = _CoarseGrid(field, axes, coarse_resolution)

    cells = resolution - 1
    block_counts = [math.ceil(cells / block_size)] * 3
    sampler = _BlockSampler(field, axes, refine, block_counts)
    edge_keys, grid_verts, faces, num_verts = [], [], [], 0
    block_ids = list(itertools.product(*(range(n) for n in block_counts)))
    for block_id in tqdm(block_ids, desc="marching cubes", disable=not progress):
        start = np.asarray(block_id) * block_size
        index_ranges = [np.arange(s, min(s + block_size, cells) + 1) for s in start]
        values = sampler.block(block_id, index_ranges)
        if values is None:
            continue
        block_verts, block_faces = mcubes.marching_cubes(values, field.threshold)
        if len(block_faces) == 0:
            continue
        edge_keys.append(_edge_keys(block_verts, start, resolution))
        grid_verts.append(block_verts + start)
        faces.append(block_faces.astype(np.int64) + num_verts)
        num_verts += len(block_verts)
    step = (high - low) / (resolution - 1)
    if not faces:
        raise ValueError(
            f"no surface at threshold {threshold}: the queried densities lie in "
            f"[{field.min_value:.6g}, {field.max_value:.6g}] within the box {low.tolist()}..{high.tolist()} at "
            f"{resolution} samples per axis (parts thinner than the spacing, {float(step.max()):.3g}, can fall between "
            "samples: a higher resolution finds them)"
        )
    welded_verts, welded_faces = _weld(np.concatenate(edge_keys), np.concatenate(grid_verts), np.concatenate(faces))
    verts = (low + welded_verts * step).astype(np.float32)
    # Vertices of different edges can only meet at a sample: those within float32 rounding of one (a threshold a hair
    # from its value) land on its float32 point. They are welded too, keyed by their first occurrence (the order
    # stays that of the edge keys).
    at_sample = np.flatnonzero((verts == (low + np.round(welded_verts) * step).astype(np.float32)).all(axis=1))
    _, first, position_id = np.unique(verts[at_sample], axis=0, return_index=True, return_inverse=True)
    if len(first) < len(at_sample):
        keys = np.arange(len(verts))
        keys[at_sample] = at_sample[first][position_id.reshape(-1)]
        verts, welded_faces = _weld(keys, verts, welded_faces)
    if len(welded_faces) == 0:  # every face collapsed onto a sample the field crosses within rounding
        raise ValueError(
            f"no surface at threshold {threshold}: the field crosses it only at isolated samples, where the surface "
            "collapses to points"
        )
    return Mesh(verts=torch.from_numpy(verts), faces=torch.from_numpy(welded_faces))


def cleanup_mesh(
    mesh: Mesh, min_component_fraction: float = 0.01, target_faces: int | None = None, smooth_iterations: int = 0
) -> Mesh:
    """Drop small floating pieces, optionally smooth, and optionally decimate (in this order).

    Args:
        mesh: input mesh. Connectivity is taken over vertex positions, so pieces split only at UV seams stay whole.
        min_component_fraction: connected pieces with fewer faces than this fraction of all faces are dropped
            (the largest piece is always kept); 0 keeps everything.
        target_faces: if given and smaller than the face count, decimate by quadric edge collapse
            (``fast_simplification``, an optional dependency) to about this many faces (at most
            :data:`DECIMATE_TOLERANCE` more), keeping the topology: a closed manifold stays closed and manifold, no
            piece splits off or vanishes; vertex colours are carried over from the nearest original vertex. Not
            available for meshes with UVs (decimate before unwrapping).
        smooth_iterations: iterations of Taubin's lambda|mu smoothing (``trimesh.smoothing.filter_taubin``, lambda
            0.5, mu -0.53): a low-pass filter of the surface that, unlike plain Laplacian smoothing, nearly keeps
            its volume. Each iteration reaches about one edge further, so the count to use grows with the
            marching-cubes resolution. 0: off. Not available for meshes with UVs (their seams would tear).

    Returns:
        The cleaned mesh (vertex attributes and texture kept; unused vertices removed).
    """
    if not 0.0 <= min_component_fraction < 1.0:
        raise ValueError(f"min_component_fraction must be in [0, 1), got {min_component_fraction}")
    smooth_iterations = check_int(smooth_iterations, "smooth_iterations", 0, MAX_SMOOTH_ITERATIONS)
    if target_faces is not None:
        target_faces = check_int(target_faces, "target_faces", 1, 1 << 31)
    for asked, what in ((target_faces is not None, "decimate"), (smooth_iterations > 0, "smooth")):
        if asked and mesh.uvs is not None:
            raise ValueError(f"cleanup_mesh cannot {what} a mesh with UVs; {what} before UV unwrapping")
    faces = mesh.faces.cpu().numpy()
    if min_component_fraction > 0:
        _, position_id = np.unique(mesh.verts.detach().cpu().numpy(), axis=0, return_inverse=True)
        welded_faces = position_id.reshape(-1)[faces]
        labels = _face_components(welded_faces, int(position_id.max()) + 1)
        sizes = np.bincount(labels)
        keep_label = sizes >= min_component_fraction * len(faces)
        keep_label[np.argmax(sizes)] = True
        faces = faces[keep_label[labels]]
    mesh = _subset(mesh, faces)
    if smooth_iterations:
        mesh = _smooth(mesh, smooth_iterations)
    if target_faces is not None and target_faces < mesh.num_faces:
        mesh = _decimate(mesh, target_faces)
    return mesh


# --------------------------------------------------------------------------------------------------------------------
# Field sampling
# --------------------------------------------------------------------------------------------------------------------
class _Field:
    """Chunked queries of the user's field, with the value range seen (for error messages)."""

    def __init__(self, query_fn: QueryFn, chunk_size: int, device: torch.device, threshold: float) -> None:
        self.query_fn, self.chunk_size, self.device, self.threshold = query_fn, chunk_size, device, threshold
        self.min_value, self.max_value = math.inf, -math.inf

    def query(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) float64 points -> (N,) float64 densities."""
        out = np.empty(len(points), dtype=np.float64)
        with torch.no_grad():
            for begin in range(0, len(points), self.chunk_size):
                chunk = torch.from_numpy(points[begin : begin + self.chunk_size].astype(np.float32)).to(self.device)
                density = self.query_fn(chunk)
                check_tensor(density, "query_fn output", finite=False)
                if density.shape not in ((len(chunk),), (len(chunk), 1)):
                    raise ValueError(
                        f"query_fn must return ({len(chunk)},) or ({len(chunk)}, 1) densities, "
                        f"got shape {tuple(density.shape)}"
                    )
                values = density.detach().reshape(-1).double().cpu().numpy()
                if np.isnan(values).any():
                    raise ValueError("query_fn returned NaN densities")
                out[begin : begin + len(values)] = values
        if len(out):
            self.min_value, self.max_value = min(self.min_value, out.min()), max(self.max_value, out.max())
        return out

    def query_grid(self, axes: list[np.ndarray], index_ranges: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
        """Densities at the samples of a sub-grid where ``mask`` (its shape) is True, in C order."""
        i, j, k = (r[n] for r, n in zip(index_ranges, np.nonzero(mask), strict=True))
        return self.query(np.stack([axes[0][i], axes[1][j], axes[2][k]], axis=1))


class _CoarseGrid:
    """Coarse samples (a strided subset of the fine grid) and the dilated set of cells that straddle the threshold."""

    def __init__(self, field: _Field, axes: list[np.ndarray], coarse_resolution: int) -> None:
        fine_count = len(axes[0])
        stride = math.ceil((fine_count - 1) / (coarse_resolution - 1))
        coarse_index = np.append(np.arange(0, fine_count - 1, stride), fine_count - 1)  # fine indices of the samples
        n = len(coarse_index)
        self.values = np.empty((n, n, n), dtype=np.float64)
        # Slabs of about one query chunk at a time: few field calls (each has a fixed cost), bounded point arrays.
        slabs = max(1, field.chunk_size // (n * n))
        for i in range(0, n, slabs):
            ranges = [coarse_index[i : i + slabs], coarse_index, coarse_index]
            mask = np.ones([len(r) for r in ranges], dtype=bool)
            self.values[i : i + slabs] = field.query_grid(axes, ranges, mask).reshape(-1, n, n)
        inside = self.values > field.threshold
        corners = [inside[a : n - 1 + a, b : n - 1 + b, c : n - 1 + c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
        straddling = np.logical_or.reduce(corners) & ~np.logical_and.reduce(corners)
        self.active = ndimage.binary_dilation(straddling, structure=np.ones((3, 3, 3), dtype=bool))

        # Per fine index: the coarse cells whose closed interval contains it (two on a coarse sample) and the nearest
        # coarse sample, a corner of those cells.
        fine = np.arange(fine_count)
        cell = np.clip(np.searchsorted(coarse_index, fine, side="right") - 1, 0, n - 2)
        on_sample = (coarse_index[cell] == fine) & (cell > 0)
        self.cells = (cell - on_sample, cell)
        nearer_low = fine - coarse_index[cell] <= coarse_index[cell + 1] - fine
        self.nearest = np.where(nearer_low, cell, cell + 1)

    def needed(self, index_ranges: list[np.ndarray]) -> np.ndarray:
        """Mask of the block samples that touch an active coarse cell (to be queried)."""
        # "Any containing cell is active" is separable: gather both candidate cells along one axis at a time.
        mask = self.active
        for axis, r in enumerate(index_ranges):
            low, high = self.cells[0][r], self.cells[1][r]
            first = int(low[0])
            part = mask.take(np.arange(first, int(high[-1]) + 1), axis=axis)
            mask = part.take(low - first, axis=axis) | part.take(high - first, axis=axis)
        return mask

    def fill(self, index_ranges: list[np.ndarray]) -> np.ndarray:
        """Block values taken from the nearest coarse sample (right side of the threshold outside active cells)."""
        values = self.values
        for axis, r in enumerate(index_ranges):
            values = values.take(self.nearest[r], axis=axis)
        return values


class _BlockSampler:
    """Densities of the blocks, each grid sample queried once.

    The first sample plane of a block along each axis is copied from the block before it, so neighbouring blocks
    agree exactly (and marching cubes gives them identical border vertices) even if ``query_fn`` results depend on
    how points are batched. Only the planes still to be used are kept: memory about ``resolution^2`` values.
    """

    def __init__(self, field: _Field, axes: list[np.ndarray], coarse: _CoarseGrid | None, counts: list[int]) -> None:
        self.field, self.axes, self.coarse, self.counts = field, axes, coarse, counts
        self.planes: dict[tuple[int, ...], np.ndarray] = {}  # (axis, *block_id) -> last sample plane along axis

    def block(self, block_id: tuple[int, ...], index_ranges: list[np.ndarray]) -> np.ndarray | None:
        """(nx, ny, nz) float64 densities of a block; None if coarse-to-fine finds no surface there."""
        shape = tuple(len(r) for r in index_ranges)
        values = np.empty(shape, dtype=np.float64)
        known = np.zeros(shape, dtype=bool)
        for axis in range(3):
            previous = list(block_id)
            previous[axis] -= 1
            plane = self.planes.pop((axis, *previous), None)
            if plane is not None:
                values[_plane(axis, 0)], known[_plane(axis, 0)] = plane, True
        if self.coarse is None:
            to_query = ~known
        else:
            needed = self.coarse.needed(index_ranges)
            if not needed.any():
                return None  # every sample is filled from the coarse grid on one side: no surface in this block
            to_fill = ~known & ~needed
            values[to_fill] = self.coarse.fill(index_ranges)[to_fill]
            to_query = ~known & needed
        values[to_query] = self.field.query_grid(self.axes, index_ranges, to_query)
        for axis in range(3):
            if block_id[axis] + 1 < self.counts[axis]:
                self.planes[(axis, *block_id)] = values[_plane(axis, -1)].copy()
        return values


def _plane(axis: int, index: int) -> tuple[slice | int, ...]:
    selection: list[slice | int] = [slice(None)] * 3
    selection[axis] = index
    return tuple(selection)


# --------------------------------------------------------------------------------------------------------------------
# Mesh assembly
# --------------------------------------------------------------------------------------------------------------------
def _edge_keys(block_verts: np.ndarray, start: np.ndarray, resolution: int) -> np.ndarray:
    """(N,) int64 id of the grid edge each vertex lies on, from its block-local grid coordinates.

    Marching cubes puts a vertex on a cell edge: two of its grid coordinates are integers, the third is fractional
    (the edge axis). A vertex exactly on a sample (value equal to the threshold) gets the id of that sample.
    """
    on_grid = block_verts == np.floor(block_verts)
    axis = np.where(on_grid.all(axis=1), 3, np.argmin(on_grid, axis=1))
    lower = np.floor(block_verts).astype(np.int64) + start
    return ((lower[:, 0] * resolution + lower[:, 1]) * resolution + lower[:, 2]) * 4 + axis


def _weld(keys: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with equal edge keys, drop degenerate faces and unused vertices, and order canonically."""
    _, first, key_id = np.unique(keys, return_index=True, return_inverse=True)  # vertices sorted by edge key
    verts, faces = _compact(verts[first], _drop_degenerate(key_id.reshape(-1)[faces]))
    # Rotate each face to start at its smallest index (same orientation), then sort the faces.
    shift = np.argmin(faces, axis=1)
    faces = np.take_along_axis(faces, (shift[:, None] + np.arange(3)) % 3, axis=1)
    faces = faces[np.lexsort((faces[:, 2], faces[:, 1], faces[:, 0]))]
    return verts, faces


def _face_components(faces: np.ndarray, num_verts: int) -> np.ndarray:
    """(F,) connected-component label of each face (faces sharing a vertex are connected)."""
    rows = faces.reshape(-1)
    cols = np.roll(faces, 1, axis=1).reshape(-1)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_verts, num_verts))
    _, vertex_labels = connected_components(graph, directed=False)
    return vertex_labels[faces[:, 0]]


def _subset(mesh: Mesh, faces: np.ndarray) -> Mesh:
    """Mesh made of the given faces (indices into ``mesh``), without unused vertices (order kept)."""
    used = np.zeros(mesh.num_verts, dtype=bool)
    used[faces.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    keep = torch.from_numpy(np.nonzero(used)[0]).to(mesh.verts.device)
    return Mesh(
        verts=mesh.verts[keep],
        faces=torch.from_numpy(remap[faces]).to(mesh.faces.device),
        vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[keep],
        uvs=None if mesh.uvs is None else mesh.uvs[keep],
        texture=mesh.texture,
    )


def _smooth(mesh: Mesh, iterations: int) -> Mesh:
    import trimesh

    surface = trimesh.Trimesh(mesh.verts.detach().cpu().double().numpy(), mesh.faces.cpu().numpy(), process=False)
    trimesh.smoothing.filter_taubin(surface, lamb=0.5, nu=0.53, iterations=iterations)
    verts = torch.from_numpy(np.asarray(surface.vertices)).to(mesh.verts)
    return dataclasses.replace(mesh, verts=verts)


def _decimate(mesh: Mesh, target_faces: int) -> Mesh:
    """Quadric edge collapse to about ``target_faces`` faces that keeps the surface's topology.

    fast_simplification (Fast-Quadric-Mesh-Simplification) collapses edges without checking the link condition:
    on a closed mesh it pinches thin tunnels into edges shared by four faces, folds tetrahedra into back-to-back
    face pairs and lets small closed pieces split off. Its collapses are therefore replayed and those that would
    change the topology are left out (:func:`_legal_collapses`); the faces those leave are decimated again by
    further passes (asking the simplifier for more collapses, replaying legal ones down to the target) until the
    count is within :data:`DECIMATE_TOLERANCE` above the target or no collapse is legal.
    Vertices at the same position are welded first, so seams split for colours or normals do not tear open.
    """
    try:
        import fast_simplification
    except ImportError as exc:
        raise ImportError(
            "decimation needs the optional package fast-simplification (pip install fast-simplification==0.2.0)"
        ) from exc
    original = mesh.verts.detach().cpu().double().numpy()
    verts, position_id = np.unique(original, axis=0, return_inverse=True)  # welded: seams do not tear open
    verts, faces = _compact(verts, _drop_degenerate(position_id.reshape(-1)[mesh.faces.cpu().numpy()]))
    request = target_faces
    for _ in range(_DECIMATE_PASSES):
        if len(faces) <= target_faces * (1 + DECIMATE_TOLERANCE):
            break
        new_verts, new_faces, collapses = fast_simplification.simplify(
            verts, faces, target_count=request, return_collapses=True
        )
        if request == target_faces and _topology_signature(new_faces) == _topology_signature(faces):
            verts, faces = new_verts, new_faces.astype(np.int64)  # every collapse was legal: keep them all
            continue
        legal = _legal_collapses(faces, len(verts), collapses, len(faces) - target_faces)
        if not legal.any():
            break
        verts, faces = _apply_collapses(verts, faces, collapses, legal, new_verts)
        # The simplifier proposes the left-out collapses first again: ask it for more (legal ones stop at the target).
        request = max(4, target_faces - (len(faces) - target_faces))
    vertex_colors = None
    if mesh.vertex_colors is not None:
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(original).query(verts)
        vertex_colors = mesh.vertex_colors[torch.from_numpy(nearest).to(mesh.vertex_colors.device)]
    return Mesh(
        verts=torch.from_numpy(verts).to(mesh.verts),
        faces=torch.from_numpy(faces).to(mesh.faces.device),
        vertex_colors=vertex_colors,
    )


def _drop_degenerate(faces: np.ndarray) -> np.ndarray:
    """Faces without a repeated vertex index."""
    return faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]


def _topology_signature(faces: np.ndarray) -> tuple[int, int, int]:
    """(Euler characteristic V - E + F, edges shared by more than two faces, faces on the vertices of another).

    A topology-preserving edge collapse keeps the Euler characteristic and adds no such edge or face.
    """
    _, edge_counts = np.unique(np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1), axis=0, return_counts=True)
    _, face_counts = np.unique(np.sort(faces, axis=1), axis=0, return_counts=True)
    euler = len(np.unique(faces)) - len(edge_counts) + len(faces)
    return euler, int((edge_counts > 2).sum()), int(face_counts[face_counts > 1].sum())


def _legal_collapses(faces: np.ndarray, num_verts: int, collapses: np.ndarray, max_removed: int) -> np.ndarray:
    """(C,) bool: which collapses ``(keep, drop)`` to replay, in order, so that the topology stays as it is.

    A collapse is legal when its vertices are still joined by an edge, their common neighbours are exactly the
    vertices opposite that edge (the link condition: nothing is pinched, no face doubled) and they are not two
    vertices of a tetrahedron (which would fold flat). Collapses are checked against the mesh as the legal ones
    before them leave it; none once they have removed ``max_removed`` faces.
    """
    face_list = faces.tolist()
    vertex_faces = _grouped_sets(faces.reshape(-1), np.repeat(np.arange(len(faces)), 3), num_verts)
    ends = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)  # directed edges; a closed mesh has both directions
    neighbours = _grouped_sets(
        np.concatenate([ends[:, 0], ends[:, 1]]), np.concatenate([ends[:, 1], ends[:, 0]]), num_verts
    )
    legal = np.zeros(len(collapses), dtype=bool)
    for i, (keep, drop) in enumerate(collapses.tolist()):
        if max_removed <= 0:
            break
        kept_neighbours, dropped_neighbours = neighbours[keep], neighbours[drop]
        if keep not in dropped_neighbours or (len(kept_neighbours) == 3 and len(dropped_neighbours) == 3):
            continue
        shared = vertex_faces[keep] & vertex_faces[drop]
        opposite = {v for f in shared for v in face_list[f]} - {keep, drop}
        if kept_neighbours & dropped_neighbours != opposite:
            continue
        legal[i] = True
        max_removed -= len(shared)
        for f in shared:
            for v in face_list[f]:
                vertex_faces[v].discard(f)
        for f in vertex_faces[drop]:
            face = face_list[f]
            face[face.index(drop)] = keep
        vertex_faces[keep] |= vertex_faces[drop]
        vertex_faces[drop] = set()
        dropped_neighbours.discard(keep)
        kept_neighbours.discard(drop)
        for v in dropped_neighbours:
            neighbours[v].discard(drop)
            neighbours[v].add(keep)
        kept_neighbours |= dropped_neighbours
        neighbours[drop] = set()
    return legal


def _grouped_sets(keys: np.ndarray, values: np.ndarray, num_keys: int) -> list[set[int]]:
    """For each key 0..num_keys-1, the set of values paired with it."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(num_keys + 1)).tolist()
    values = values[order].tolist()
    return [set(values[begin:end]) for begin, end in itertools.pairwise(bounds)]


def _apply_collapses(
    verts: np.ndarray, faces: np.ndarray, collapses: np.ndarray, legal: np.ndarray, simplified_verts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mesh after the ``legal`` collapses, vertices placed where the simplifier put them (unused ones removed).

    ``simplified_verts`` are the simplifier's vertices after all collapses: the vertices its faces still use, in
    input order. A vertex that one of the left-out collapses would have removed keeps its input position; one that
    only left-out collapses after it would have grown stays where the simplifier placed the grown vertex (which
    minimises the quadric error of a few more faces, all near it).
    """

    def roots(pairs: np.ndarray) -> np.ndarray:
        parent = np.arange(len(verts))
        parent[pairs[:, 1]] = pairs[:, 0]  # a vertex is removed once, into a vertex still there
        while not np.array_equal(parent[parent], parent):
            parent = parent[parent]
        return parent

    positions = verts.copy()
    positions[np.unique(_drop_degenerate(roots(collapses)[faces]))] = simplified_verts
    return _compact(positions, _drop_degenerate(roots(collapses[legal])[faces]))


def _compact(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertices that faces use (order kept) and the faces renumbered."""
    used = np.zeros(len(verts), dtype=bool)
    used[faces.reshape(-1)] = True
    return verts[used], (np.cumsum(used) - 1)[faces].reshape(-1, 3).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------------------------
def _parse_bounds(bounds: float | Sequence[float] | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """-> (low (3,), high (3,)) float64 corners of the box."""
    try:
        array = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bounds must be r, (lo, hi) or ((x0, y0, z0), (x1, y1, z1)), got {bounds!r}") from exc
    if array.shape == ():
        low, high = np.full(3, -float(array)), np.full(3, float(array))
    elif array.shape == (2,):
        low, high = np.full(3, array[0]), np.full(3, array[1])
    elif array.shape == (2, 3):
        low, high = array[0].copy(), array[1].copy()
    else:
        raise ValueError(f"bounds must be r, (lo, hi) or ((x0, y0, z0), (x1, y1, z1)), got shape {array.shape}")
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
        raise ValueError(f"bounds must be finite with max > min on every axis, got {low.tolist()}..{high.tolist()}")
    return low, high
