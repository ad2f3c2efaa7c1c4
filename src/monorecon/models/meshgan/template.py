"""UV-sphere mesh template of the ConvMesh generator: geometry, UV maps, tangent frames, left-right mirroring.

Template (SPEC §3): unit sphere with 32 segments x 16 rings, 482 vertices (2 poles + 15 rings x 32) and 960 faces,
counter-clockwise seen from outside, in the monorecon world frame (+Y up, +Z front). A vertex has polar angle
``theta`` (0 at the north pole +Y) and azimuth ``phi`` (0 at the front +Z, pi/2 at +X):
``p = (sin theta sin phi, cos theta, sin theta cos phi)``.

UV maps (deformation and texture) are images of shape (C, H, W): row r covers ``theta`` in ``[r, r+1] * pi / H``
(row 0 at the north pole) and column c covers ``phi`` in ``[c, c+1] * 2 pi / W`` (wrapping around). This is also the
texture layout of exported meshes: ``u = phi / (2 pi)`` to the right, ``v = 1 - theta / pi`` up from the bottom row
(:mod:`monorecon.core.mesh`).

Left-right symmetry (mirror ``x -> -x``, i.e. ``phi -> 2 pi - phi``): a generator outputs the half maps covering
``phi`` in [0, pi] (x >= 0); :meth:`UVSphereTemplate.mirror` appends their mirror image. Displacements are expressed
in the per-vertex frame (normal ``n``, tangent ``t = dp/dphi``, bitangent ``b = dp/dtheta``, unit length); the
mirror maps ``t`` to ``-t`` at the mirrored vertex, so the tangential channel changes sign in the mirrored half, and
vertices on the symmetry plane keep a zero tangential displacement.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from monorecon.core.checks import check_tensor
from monorecon.core.mesh import Mesh
from monorecon.losses.fitting import face_neighbors

__all__ = ["UVSphereTemplate"]


class UVSphereTemplate:
    """The UV-sphere template and the operations between UV maps and vertices.

    Attributes:
        verts: (V, 3) unit-sphere vertices (V = 2 + (rings - 1) * segments).
        faces: (F, 3) long, counter-clockwise from outside (F = 2 * segments * (rings - 1)).
        theta, phi: (V,) polar angle and azimuth of each vertex (poles: phi = 0).
        frames: (V, 3, 3) rows (n, t, b); t and b are zero at the poles.
        neighbors: (F, 3) face across each edge (:func:`monorecon.losses.fitting.face_neighbors`).
        render_to_vertex, render_faces, render_uvs: seam-split topology for texturing: the azimuth seam is
            duplicated (u = 0 and u = 1) and each pole is split per segment, so every render vertex has one UV.
    """

    def __init__(self, segments: int = 32, rings: int = 16) -> None:
        if segments < 3 or rings < 2:
            raise ValueError(f"UV sphere needs segments >= 3 and rings >= 2, got {segments}, {rings}")
        self.segments, self.rings = segments, rings
        ring_theta = torch.arange(1, rings, dtype=torch.float64) * math.pi / rings
        seg_phi = torch.arange(segments, dtype=torch.float64) * 2 * math.pi / segments
        theta = torch.cat([torch.zeros(1), ring_theta.repeat_interleave(segments), torch.full((1,), math.pi)])
        phi = torch.cat([torch.zeros(1), seg_phi.repeat(rings - 1), torch.zeros(1)])
        self.theta, self.phi = theta.float(), phi.float()
        verts = torch.stack([theta.sin() * phi.sin(), theta.cos(), theta.sin() * phi.cos()], dim=-1)
        self.verts = verts.float()
        south = verts.shape[0] - 1

        def ring_vertex(i: int, j: int) -> int:  # ring i in 1..rings-1, segment j (wraps)
            return 1 + (i - 1) * segments + j % segments

        faces = []
        for j in range(segments):
            faces.append((0, ring_vertex(1, j), ring_vertex(1, j + 1)))
            for i in range(1, rings - 1):
                a, b = ring_vertex(i, j), ring_vertex(i + 1, j)
                c, d = ring_vertex(i + 1, j + 1), ring_vertex(i, j + 1)
                faces += [(a, b, c), (a, c, d)]
            faces.append((south, ring_vertex(rings - 1, j + 1), ring_vertex(rings - 1, j)))
        self.faces = _outward(self.verts, torch.tensor(faces, dtype=torch.long))
        self.neighbors = face_neighbors(self.faces)

        normal = self.verts
        tangent = torch.stack([phi.cos(), torch.zeros_like(phi), -phi.sin()], dim=-1).float()
        bitangent = torch.stack([theta.cos() * phi.sin(), -theta.sin(), theta.cos() * phi.cos()], dim=-1).float()
        tangent[[0, south]] = 0
        bitangent[[0, south]] = 0
        self.frames = torch.stack([normal, tangent, bitangent], dim=1)
        self._build_render_topology()

    # ----------------------------------------------------------------------------------------------------------------
    @property
    def num_verts(self) -> int:
        return int(self.verts.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def _build_render_topology(self) -> None:
        s, rings = self.segments, self.rings
        south = self.num_verts - 1
        index, uvs = [], []

        def add(vertex: int, u: float, theta: float) -> int:
            index.append(vertex)
            uvs.append((u, 1.0 - theta / math.pi))
            return len(index) - 1

        north_ids = [add(0, (j + 0.5) / s, 0.0) for j in range(s)]
        ring_ids = [
            [add(1 + (i - 1) * s + j % s, j / s, i * math.pi / rings) for j in range(s + 1)] for i in range(1, rings)
        ]
        south_ids = [add(south, (j + 0.5) / s, math.pi) for j in range(s)]
        faces = []
        for j in range(s):
            faces.append((north_ids[j], ring_ids[0][j], ring_ids[0][j + 1]))
            for i in range(rings - 2):
                a, b, c, d = ring_ids[i][j], ring_ids[i + 1][j], ring_ids[i + 1][j + 1], ring_ids[i][j + 1]
                faces += [(a, b, c), (a, c, d)]
            faces.append((south_ids[j], ring_ids[-1][j + 1], ring_ids[-1][j]))
        self.render_to_vertex = torch.tensor(index, dtype=torch.long)
        self.render_faces = _outward(self.verts[self.render_to_vertex], torch.tensor(faces, dtype=torch.long))
        self.render_uvs = torch.tensor(uvs, dtype=torch.float32)

    # ----------------------------------------------------------------------------------------------------------------
    # UV maps
    # ----------------------------------------------------------------------------------------------------------------
    @staticmethod
    def mirror(half_map: torch.Tensor, tangent_channel: int | None = None) -> torch.Tensor:
        """(B, C, H, W/2) half map (phi in [0, pi]) -> (B, C, H, W) full left-right symmetric map.

        ``tangent_channel``: channel holding the tangential displacement, negated in the mirrored half.
        """
        check_tensor(half_map, "half_map", (None, None, None, None), floating=True)
        mirrored = half_map.flip(-1)
        if tangent_channel is not None:
            sign = torch.ones(half_map.shape[1], 1, 1, dtype=half_map.dtype, device=half_map.device)
            sign[tangent_channel] = -1
            mirrored = mirrored * sign
        return torch.cat([half_map, mirrored], dim=-1)

    def sample(self, uv_map: torch.Tensor) -> torch.Tensor:
        """Bilinear samples of (B, C, H, W) UV maps at the template vertices -> (B, V, C).

        Azimuth wraps around; each pole takes the mean of its edge row (it touches every azimuth).
        """
        check_tensor(uv_map, "uv_map", (None, None, None, None), floating=True)
        height, width = uv_map.shape[-2:]
        padded = torch.cat([uv_map[..., -1:], uv_map, uv_map[..., :1]], dim=-1)  # circular in phi
        # Texel c has its centre at phi = 2 pi (c + 0.5) / W, i.e. at padded column c + 1.
        col = self.phi.to(uv_map) / (2 * math.pi) * width + 1.0
        row = self.theta.to(uv_map) / math.pi * height
        grid = torch.stack([col / (width + 2) * 2 - 1, row / height * 2 - 1], dim=-1)
        grid = grid[None, :, None].expand(uv_map.shape[0], -1, -1, -1)
        values = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
        values = values[..., 0].transpose(1, 2)  # (B, V, C)
        poles = torch.stack([uv_map[..., 0, :].mean(-1), uv_map[..., -1, :].mean(-1)], dim=1)  # (B, 2, C)
        return torch.cat([poles[:, :1], values[:, 1:-1], poles[:, 1:]], dim=1)

    def vertex_positions(self, displacement_map: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) displacement maps (channels n, t, b) -> (B, V, 3) deformed vertex positions."""
        check_tensor(displacement_map, "displacement_map", (None, 3, None, None), floating=True)
        local = self.sample(displacement_map)  # (B, V, 3) in (n, t, b)
        offsets = (local[..., None, :] @ self.frames.to(local)).squeeze(-2)
        return self.verts.to(local) + offsets

    def vertex_colors(self, texture: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) textures -> (B, V, 3) colours sampled at the vertices."""
        check_tensor(texture, "texture", (None, 3, None, None), floating=True)
        return self.sample(texture)

    def render_verts(self, verts: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) template-topology vertices -> (B, R, 3) vertices of the seam-split render topology."""
        check_tensor(verts, "verts", (None, self.num_verts, 3), floating=True)
        return verts[:, self.render_to_vertex.to(verts.device)]

    def to_mesh(self, verts: torch.Tensor, texture: torch.Tensor) -> Mesh:
        """One textured :class:`Mesh` from (V, 3) vertices and a (3, H, W) texture in [0, 1] (seam-split UVs)."""
        check_tensor(verts, "verts", (self.num_verts, 3), floating=True)
        check_tensor(texture, "texture", (3, None, None), floating=True)
        return Mesh(
            verts=verts.detach().float().cpu()[self.render_to_vertex],
            faces=self.render_faces.clone(),
            uvs=self.render_uvs.clone(),
            texture=texture.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).contiguous(),
        )

    def directions(self, height: int, width: int) -> torch.Tensor:
        """(H, W, 3) unit directions of the UV-map texel centres (for building maps from a mesh)."""
        theta = (torch.arange(height, dtype=torch.float64) + 0.5) * math.pi / height
        phi = (torch.arange(width, dtype=torch.float64) + 0.5) * 2 * math.pi / width
        t, p = torch.meshgrid(theta, phi, indexing="ij")
        return torch.stack([t.sin() * p.sin(), t.cos(), t.sin() * p.cos()], dim=-1).float()


def _outward(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Reorder faces of a sphere-like (star-shaped around the origin) mesh so that their normals point outwards."""
    v0, v1, v2 = verts[faces].unbind(1)
    inward = (torch.linalg.cross(v1 - v0, v2 - v0, dim=-1) * (v0 + v1 + v2)).sum(-1) < 0
    faces = faces.clone()
    faces[inward] = faces[inward][:, [0, 2, 1]]
    return faces
