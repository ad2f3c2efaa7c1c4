"""Triangle mesh container shared by monorecon (extraction, rendering, I/O, data synthesis).

Conventions:

* Coordinates are in the monorecon world frame (+Y up, +Z towards the front viewer, see
  :mod:`monorecon.core.cameras`). This is glTF's frame, so meshes are exported without any rotation.
* Faces are counter-clockwise seen from outside: the right-hand normal ``(v1 - v0) x (v2 - v0)`` points out.
* Colours (vertex colours and texture texels) are display values in [0, 1], like the pixels of an image.
* UVs are per vertex (vertices are split at seams, as xatlas outputs them, so ``faces`` index ``verts`` and ``uvs``
  alike). ``u`` goes right and ``v`` goes **up from the bottom row** of the texture (the OBJ convention). The texture
  is stored like an image, row 0 at the top, so the texel of ``(u, v)`` is at row ``(1 - v) * H``, column ``u * W``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch
import trimesh
from PIL import Image

from .checks import check_real, check_tensor
from .shading import face_areas, face_normals, vertex_normals

__all__ = ["MAX_PLACED_HEIGHT", "MIN_PLACED_HEIGHT", "PLACEMENT_ORIGINS", "Mesh", "check_placement", "colors_to_uint8"]

#: Where :meth:`Mesh.placed` can put the origin.
PLACEMENT_ORIGINS = ("model", "center", "bottom")
#: The smallest and largest heights :meth:`Mesh.placed` scales a mesh to (a micrometre and a kilometre, in metres;
#: far smaller meshes lose their faces' areas to float32 underflow).
MIN_PLACED_HEIGHT, MAX_PLACED_HEIGHT = 1e-6, 1e3


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh with optional vertex colours and/or UVs with a texture (immutable: use ``dataclasses.replace``).

    Attributes:
        verts: (V, 3) float vertex positions (world).
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside.
        vertex_colors: (V, 3) float in [0, 1], or None.
        uvs: (V, 2) float texture coordinates (``v`` up from the texture's bottom row), or None.
        texture: (H, W, 3) float in [0, 1], row 0 at the top, or None; requires ``uvs``.

    Raises:
        ValueError: on an empty mesh, wrong shapes or dtypes, non-finite values, face indices out of range, colours
            outside [0, 1], or a texture without UVs.
    """

    verts: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor | None = None
    uvs: torch.Tensor | None = None
    texture: torch.Tensor | None = None

    def __post_init__(self) -> None:
        sizes: dict[str, int] = {}
        check_tensor(self.verts, "mesh verts", ("V", 3), sizes=sizes, floating=True)
        check_tensor(self.faces, "mesh faces", (None, 3), floating=False)
        if self.faces.dtype != torch.int64:
            raise ValueError(f"mesh faces must be int64 (torch.long), got {self.faces.dtype}")
        if self.verts.shape[0] == 0 or self.faces.shape[0] == 0:
            raise ValueError(f"mesh is empty: {self.verts.shape[0]} vertices, {self.faces.shape[0]} faces")
        low, high = int(self.faces.min()), int(self.faces.max())
        if low < 0 or high >= self.verts.shape[0]:
            raise ValueError(
                f"mesh faces index vertices {low}..{high}, out of range for {self.verts.shape[0]} vertices"
            )
        if self.vertex_colors is not None:
            check_tensor(
                self.vertex_colors, "mesh vertex_colors", ("V", 3), sizes=sizes, floating=True, unit_range=True
            )
        if self.uvs is not None:
            check_tensor(self.uvs, "mesh uvs", ("V", 2), sizes=sizes, floating=True)
        if self.texture is not None:
            check_tensor(self.texture, "mesh texture", (None, None, 3), floating=True, unit_range=True)
            if self.texture.shape[0] == 0 or self.texture.shape[1] == 0:
                raise ValueError(f"mesh texture is empty: shape {tuple(self.texture.shape)}")
            if self.uvs is None:
                raise ValueError("mesh texture given without uvs")

    # ----------------------------------------------------------------------------------------------------------------
    # Sizes and geometry
    # ----------------------------------------------------------------------------------------------------------------
    @property
    def num_verts(self) -> int:
        return int(self.verts.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def bounds(self) -> torch.Tensor:
        """(2, 3) axis-aligned bounding box: row 0 the minimum corner, row 1 the maximum corner."""
        return torch.stack([self.verts.amin(dim=0), self.verts.amax(dim=0)])

    @property
    def face_normals(self) -> torch.Tensor:
        """(F, 3) unit outward face normals; zero for degenerate faces."""
        return face_normals(self.verts, self.faces)

    @property
    def face_areas(self) -> torch.Tensor:
        """(F,) triangle areas."""
        return face_areas(self.verts, self.faces)

    def position_ids(self) -> torch.Tensor:
        """(V,) the same id for vertices at the same position (copies split at UV seams), ids 0..P-1."""
        return torch.unique(self.verts.detach(), dim=0, return_inverse=True)[1]

    @property
    def is_closed(self) -> bool:
        """Whether the surface bounds a solid: with vertices at the same position welded (copies split at UV seams),
        every edge is run along as often in one direction as in the other by the faces around it (closed and
        consistently oriented, so the winding number is defined everywhere; closed parts that touch or overlap
        count as closed). Faces that welding collapses are ignored; no face: not closed."""
        position_id = self.position_ids()
        faces = position_id[self.faces]
        faces = faces[(faces != faces.roll(1, dims=1)).all(dim=1)]
        if len(faces) == 0:
            return False
        n = int(position_id.max()) + 1
        start, end = faces.reshape(-1), faces.roll(-1, dims=1).reshape(-1)  # directed edges, face by face
        edges, counts = torch.unique(start * n + end, return_counts=True)
        reverse = torch.searchsorted(edges, end * n + start).clamp(max=len(edges) - 1)
        if not bool((edges[reverse] == end * n + start).all()):
            return False
        return bool((counts[reverse] == counts[torch.searchsorted(edges, start * n + end)]).all())

    @property
    def vertex_normals(self) -> torch.Tensor:
        """(V, 3) unit area-weighted vertex normals, differentiable w.r.t. ``verts``; zero where undefined. The normals
        previews render with and exports write (:func:`monorecon.io.mesh_io.unit_vertex_normals`).

        The vertices of one :meth:`normal_groups` group (copies of a vertex at one position) share the normal of all
        their faces: no UV seam is shaded, and a flat-shaded cube stays flat.
        """
        group = self.normal_groups()
        # First vertex of each group, gathered from verts so that gradients flow to the positions.
        index = torch.arange(self.num_verts, device=self.verts.device)
        first = torch.full_like(index[: int(group.max()) + 1], self.num_verts)
        first = first.scatter_reduce(0, group, index, reduce="amin")
        return vertex_normals(self.verts[first], group[self.faces])[group]

    def normal_groups(self) -> torch.Tensor:
        """(V,) ids 0..G-1 of the vertices that share one normal.

        Copies of a vertex at one position are split at UV seams, or by a mesh's author to keep edges hard. When most
        edges where copies meet (not counting flat ones, within :data:`FLAT_DEGREES`) are sharper than
        :data:`HARD_EDGE_DEGREES`, they are hard edges: copies with a face of one within that angle of a face of the
        other (directly or through other copies) form a group. Otherwise they are UV seams, as in reconstructions
        (whose rough surfaces are shaded smooth across creases): all copies at a position form one group.
        """
        position = self.position_ids()
        if int(position.max()) + 1 == self.num_verts:  # no copies
            return position
        faces = self.faces.cpu()
        unit = face_normals(self.verts.detach().cpu().double(), faces)
        if not _splits_are_hard_edges(unit, faces, position.cpu()):
            return position
        return _hard_edge_groups(unit, faces, position.cpu()).to(position.device)

    def normalized(self, box: float = 1.0) -> Mesh:
        """Copy centred on its bounding-box centre and scaled so that the longest box side is ``box``."""
        if not box > 0:
            raise ValueError(f"box must be positive, got {box}")
        low, high = self.bounds
        extent = float((high - low).max())
        if extent <= 0:
            raise ValueError("cannot normalise a mesh whose vertices all coincide")
        return dataclasses.replace(self, verts=(self.verts - (low + high) / 2) * (box / extent))

    def bounding_sphere(self) -> tuple[torch.Tensor, float]:
        """(3,) centre of the bounding box and the largest distance of a vertex from it (the radius that frames the
        mesh in a view turning about that centre)."""
        low, high = self.bounds.detach()
        centre = (low + high) / 2
        # float64: squared float32 coordinates overflow beyond ~1e19 (a radius of inf would collapse a framing)
        return centre, float((self.verts.detach().double() - centre.double()).norm(dim=-1).max())

    def placed(self, height: float | None = None, origin: str = "model") -> Mesh:
        """Copy scaled to a height and moved so that a chosen point of it is the origin (export placement).

        Args:
            height: the bounding box's extent along +Y after scaling (output units: glTF reads them as metres), or
                None to keep the scale. The scaling is about the chosen origin.
            origin: ``"model"`` keeps the position (the model's frame), ``"center"`` puts the bounding-box centre at
                the origin, ``"bottom"`` the centre of the box's bottom face, so that the object stands on the
                y = 0 plane (as AR viewers and game engines place a model).

        Returns:
            The placed copy, or this mesh itself when there is nothing to do (no height, origin ``"model"``).

        Raises:
            ValueError: an unknown ``origin``, a ``height`` outside [1e-6, 1e3] or not finite, or a mesh with no
                extent along +Y to scale.
        """
        check_placement(height, origin)
        if height is None and origin == "model":
            return self
        anchor, scale = self.placement(height, origin)
        return dataclasses.replace(self, verts=(self.verts - anchor) * scale)

    def placement(self, height: float | None = None, origin: str = "model") -> tuple[torch.Tensor, float]:
        """The motion of :meth:`placed`: ``(anchor (3,), scale)``, a point ``x`` going to ``(x - anchor) * scale``
        (to carry cameras or other points along with the mesh). Same arguments and errors as :meth:`placed`."""
        check_placement(height, origin)
        low, high = self.bounds.detach()
        anchor = torch.zeros_like(low)
        if origin != "model":
            anchor = (low + high) / 2
            if origin == "bottom":
                anchor[1] = low[1]
        scale = 1.0
        if height is not None:
            extent = float(high[1] - low[1])
            if not extent > 0:
                raise ValueError("cannot scale a mesh with no height (all vertices at one y) to a height")
            scale = height / extent
        return anchor, scale

    def to(self, device: torch.device | str) -> Mesh:
        """Copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Mesh(**{k: None if v is None else v.to(device) for k, v in moved.items()})

    # ----------------------------------------------------------------------------------------------------------------
    # trimesh conversion
    # ----------------------------------------------------------------------------------------------------------------
    def to_trimesh(self) -> trimesh.Trimesh:
        """``trimesh.Trimesh`` (not processed: same vertices and faces in the same order) with the colours/texture."""
        verts = self.verts.detach().cpu().double().numpy()
        faces = self.faces.cpu().numpy()
        visual = None
        if self.uvs is not None:
            image = None if self.texture is None else Image.fromarray(colors_to_uint8(self.texture))
            material = trimesh.visual.material.SimpleMaterial(image=image)
            visual = trimesh.visual.TextureVisuals(uv=self.uvs.detach().cpu().double().numpy(), material=material)
        elif self.vertex_colors is not None:
            visual = trimesh.visual.ColorVisuals(vertex_colors=colors_to_uint8(self.vertex_colors))
        return trimesh.Trimesh(vertices=verts, faces=faces, visual=visual, process=False)

    @classmethod
    def from_trimesh(cls, tm: trimesh.Trimesh) -> Mesh:
        """Mesh from a ``trimesh.Trimesh``: vertex colours (alpha dropped) or UVs with the material's image.

        Face colours become vertex colours: a vertex where faces of different colours meet is split into one copy
        per colour (at the same position, so :attr:`is_closed` is unchanged), unused vertices are white. trimesh
        stores UVs with ``v`` up, as this module does. A file with UVs and no image
        gets trimesh's grey placeholder material: no texture here. trimesh drops the vertex colours of a PLY file that
        also has UVs; they are read back from its PLY data.
        """
        if not isinstance(tm, trimesh.Trimesh):
            raise ValueError(f"expected a trimesh.Trimesh, got {type(tm).__name__}")
        verts = torch.from_numpy(np.asarray(tm.vertices, dtype=np.float32).copy())
        faces = torch.from_numpy(np.asarray(tm.faces, dtype=np.int64).copy()).reshape(-1, 3)
        vertex_colors = uvs = texture = None
        visual = tm.visual
        if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
            vertex_colors = _colors_to_float(visual.vertex_colors)
        elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "face":
            verts, faces, vertex_colors = _split_at_face_colors(verts, faces, visual.face_colors)
        elif isinstance(visual, trimesh.visual.TextureVisuals):
            if visual.uv is not None and len(visual.uv) > 0:
                uvs = torch.from_numpy(np.asarray(visual.uv, dtype=np.float32)[:, :2].copy())
                image = _material_image(visual.material)
                if image is not None:
                    from ..io.images import pil_to_array  # lazily: monorecon.io imports this module

                    texture = torch.from_numpy(np.ascontiguousarray(pil_to_array(image)[..., :3]))  # 16-bit too
            if "color" in visual.vertex_attributes:  # trimesh keeps glTF COLOR_0 here when there is a material
                vertex_colors = _colors_to_float(visual.vertex_attributes["color"])
            else:
                vertex_colors = _ply_vertex_colors(tm)
        return cls(verts=verts, faces=faces, vertex_colors=vertex_colors, uvs=uvs, texture=texture)


def check_placement(height: float | None, origin: str, height_name: str = "height") -> None:
    """Raise ValueError unless ``height`` (None or in [:data:`MIN_PLACED_HEIGHT`, :data:`MAX_PLACED_HEIGHT`]) and
    ``origin`` (one of :data:`PLACEMENT_ORIGINS`) are valid arguments of :meth:`Mesh.placed`; ``height_name`` names
    the height."""
    if origin not in PLACEMENT_ORIGINS:
        raise ValueError(f"origin must be one of {', '.join(PLACEMENT_ORIGINS)}, got {origin!r}")
    if height is not None:
        check_real(height, height_name, MIN_PLACED_HEIGHT, MAX_PLACED_HEIGHT)


def colors_to_uint8(colors: torch.Tensor) -> np.ndarray:
    """(..., C) float colours or texture in [0, 1] -> contiguous uint8 numpy array (rounded to the nearest level)."""
    return np.ascontiguousarray(np.round(colors.detach().cpu().float().numpy() * 255.0).astype(np.uint8))


def _colors_to_float(colors: np.ndarray) -> torch.Tensor:
    """(V, 3 or 4) uint8 or float [0, 1] colours -> (V, 3) float32 tensor in [0, 1] (alpha dropped)."""
    rgb = np.asarray(colors)[:, :3]
    scale = 255.0 if rgb.dtype == np.uint8 else 1.0
    return torch.from_numpy(rgb.astype(np.float32) / scale)


def _split_at_face_colors(
    verts: torch.Tensor, faces: torch.Tensor, face_colors: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-face colours as vertex colours: (V, 3) verts, (F, 3) faces and (F, 3 or 4) uint8 colours -> (V', 3)
    verts, (F, 3) faces, (V', 3) colours in [0, 1]. Each vertex keeps its index with the first of its faces' colours
    (by colour value); each further colour at it gets a copy appended."""
    rgb = torch.from_numpy(np.asarray(face_colors)[:, :3].astype(np.int64))
    code = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]  # (F,) one integer per colour
    keys, corner_key = torch.unique(faces.reshape(-1) << 24 | code.repeat_interleave(3), return_inverse=True)
    key_vertex, key_code = keys >> 24, keys & 0xFFFFFF  # sorted by vertex, then colour
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = key_vertex[1:] != key_vertex[:-1]
    copies = key_vertex[~first]
    key_index = key_vertex.clone()
    key_index[~first] = len(verts) + torch.arange(len(copies))
    key_color = torch.stack([key_code >> 16, (key_code >> 8) & 255, key_code & 255], dim=1).float() / 255.0
    colors = torch.ones(len(verts) + len(copies), 3)
    colors[key_index] = key_color
    return torch.cat([verts, verts[copies]]), key_index[corner_key].reshape(-1, 3), colors


def _material_image(material: object) -> Image.Image | None:
    """The material's base colour image; None for none and for trimesh's placeholder (``color_image()``, what it
    gives a file with UVs but no image)."""
    for attribute in ("baseColorTexture", "image"):  # PBRMaterial (glTF), SimpleMaterial (OBJ)
        image = getattr(material, attribute, None)
        if isinstance(image, Image.Image):
            placeholder = trimesh.visual.material.color_image()
            is_placeholder = image.size == placeholder.size and np.array_equal(
                np.asarray(image), np.asarray(placeholder)
            )
            return None if is_placeholder else image
    return None


def _ply_vertex_colors(tm: trimesh.Trimesh) -> torch.Tensor | None:
    """(V, 3) colours of a PLY file's ``red`` / ``green`` / ``blue`` vertex properties (trimesh keeps the file's data
    in ``metadata["_ply_raw"]``), or None."""
    data = tm.metadata.get("_ply_raw", {}).get("vertex", {}).get("data")
    # binary files: a structured array; ASCII ones: a dict of columns
    names = data.keys() if isinstance(data, dict) else getattr(getattr(data, "dtype", None), "names", None) or ()
    if not {"red", "green", "blue"} <= set(names):
        return None
    rgb = np.stack([np.asarray(data[name]).reshape(-1) for name in ("red", "green", "blue")], axis=1)
    return _colors_to_float(rgb) if len(rgb) == len(tm.vertices) else None


HARD_EDGE_DEGREES = 60.0
"""Edges where copies of vertices meet (see :meth:`Mesh.normal_groups`) that are sharper than this are hard edges."""
FLAT_DEGREES = 1.0
"""Faces meeting at less than this angle are flat: a split between them is neither a hard edge nor a smooth seam."""


def _splits_are_hard_edges(unit: torch.Tensor, faces: torch.Tensor, position: torch.Tensor) -> bool:
    """Whether most split edges (edges of the welded mesh whose two faces use different vertices there; ``position``:
    (V,) ids) that are not flat are sharper than :data:`HARD_EDGE_DEGREES` (``unit``: (F, 3) unit face normals)."""
    ends = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)  # (3F, 2) edges, face by face
    points = position[ends].sort(dim=1).values
    key = points[:, 0] * (int(position.max()) + 1) + points[:, 1]
    order = torch.argsort(key, stable=True)
    key, vertices, face = key[order], ends[order].sort(dim=1).values, order // 3
    pair = torch.nonzero(key[1:] == key[:-1]).squeeze(1)  # neighbouring faces along an edge of the welded mesh
    split = (vertices[pair] != vertices[pair + 1]).any(dim=1)
    cosine = (unit[face[pair]] * unit[face[pair + 1]]).sum(1)[split]
    bent = int((cosine < math.cos(math.radians(FLAT_DEGREES))).sum())
    return bent > 0 and int((cosine < math.cos(math.radians(HARD_EDGE_DEGREES))).sum()) * 2 > bent


def _hard_edge_groups(unit: torch.Tensor, faces: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """(V,) group ids: two copies at one position (``position``: (V,) ids) are joined when a face of one lies within
    :data:`HARD_EDGE_DEGREES` of a face of the other (``unit``: (F, 3) unit face normals), and a chain of joined
    copies is one group."""
    corner_position = position[faces.reshape(-1)]
    order = torch.argsort(corner_position, stable=True)  # the corners at each position, side by side
    counts = torch.bincount(corner_position, minlength=len(position))
    starts = torch.cumsum(counts, 0) - counts
    per_corner = counts[corner_position]
    first = torch.repeat_interleave(torch.arange(len(corner_position)), per_corner)  # every pair of corners at a point
    offset = torch.arange(len(first)) - torch.repeat_interleave(torch.cumsum(per_corner, 0) - per_corner, per_corner)
    second = order[starts[corner_position[first]] + offset]
    joined = (unit[first // 3] * unit[second // 3]).sum(1) >= math.cos(math.radians(HARD_EDGE_DEGREES))
    corner_vertex = faces.reshape(-1).numpy()
    graph = scipy.sparse.coo_matrix(
        (np.ones(int(joined.sum())), (corner_vertex[first[joined]], corner_vertex[second[joined]])),
        shape=(len(position), len(position)),
    )
    return torch.from_numpy(scipy.sparse.csgraph.connected_components(graph, directed=False)[1]).long()
