"""Mesh files as Blender reads and writes them: binary PLY with polygons of mixed sizes, OBJ with welded positions
and normals, normals at UV seams and hard edges, GLB names."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pygltflib
import pytest
import torch
import trimesh

from monorecon.core.mesh import Mesh
from monorecon.io.mesh_io import load_mesh, save_mesh, unit_vertex_normals

# A triangle and a quad (Blender's default PLY export keeps quads), with uchar colours and float UVs.
_PLY_VERTS = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.5, 1.5, 0.25)]
_PLY_COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 100, 50)]
_PLY_UVS = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.5, 0.75)]
_PLY_FACES = [(3, 2, 4), (0, 1, 2, 3)]
_PLY_HEADER = (
    "ply\nformat {} 1.0\nelement vertex 5\nproperty float x\nproperty float y\nproperty float z\n"
    "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty float s\nproperty float t\n"
    "element face 2\nproperty list uchar uint vertex_indices\nend_header\n"
)


def _mixed_ply(encoding: str) -> bytes:
    """The triangle + quad PLY in ``encoding`` (ascii, binary_little_endian or binary_big_endian), written by hand."""
    header = _PLY_HEADER.format(encoding).encode()
    rows = zip(_PLY_VERTS, _PLY_COLORS, _PLY_UVS, strict=True)
    if encoding == "ascii":
        lines = [" ".join(map(str, (*xyz, *rgb, *uv))) for xyz, rgb, uv in rows]
        lines += [" ".join(map(str, (len(face), *face))) for face in _PLY_FACES]
        return header + ("\n".join(lines) + "\n").encode()
    order = "<" if encoding.endswith("little_endian") else ">"
    body = b"".join(struct.pack(order + "3f3B2f", *xyz, *rgb, *uv) for xyz, rgb, uv in rows)
    body += b"".join(struct.pack(f"{order}B{len(face)}I", len(face), *face) for face in _PLY_FACES)
    return header + body


@pytest.mark.parametrize("encoding", ["binary_little_endian", "binary_big_endian"])
def test_binary_ply_with_triangles_and_quads_loads_as_its_ascii_twin(tmp_path, encoding):
    (tmp_path / "ascii.ply").write_bytes(_mixed_ply("ascii"))
    (tmp_path / "binary.ply").write_bytes(_mixed_ply(encoding))
    binary, ascii_ = load_mesh(tmp_path / "binary.ply"), load_mesh(tmp_path / "ascii.ply")
    # the quad becomes two triangles: 3 triangles over the 5 vertices, as from the ASCII file
    assert binary.num_faces == 3 and binary.num_verts == 5
    torch.testing.assert_close(binary.verts, torch.tensor(_PLY_VERTS), rtol=0, atol=0)
    assert sorted(map(sorted, binary.faces.tolist())) == [[0, 1, 2], [0, 2, 3], [2, 3, 4]]
    assert torch.equal(binary.faces, ascii_.faces)
    torch.testing.assert_close(binary.vertex_colors, torch.tensor(_PLY_COLORS) / 255.0, rtol=0, atol=1e-6)
    torch.testing.assert_close(binary.vertex_colors, ascii_.vertex_colors, rtol=0, atol=0)
    torch.testing.assert_close(binary.uvs, torch.tensor(_PLY_UVS), rtol=0, atol=0)
    torch.testing.assert_close(binary.uvs, ascii_.uvs, rtol=0, atol=0)


def test_cut_binary_ply_with_mixed_faces_is_refused(tmp_path):
    (tmp_path / "cut.ply").write_bytes(_mixed_ply("binary_little_endian")[:-6])
    with pytest.raises(ValueError, match=r"could not read mesh .*cut\.ply: .*end-of-file"):
        load_mesh(tmp_path / "cut.ply")


def _split_where(mesh: Mesh, moved: torch.Tensor) -> Mesh:
    """``mesh`` with the faces ``moved`` ((F,) bool) given their own copies of the vertices they share with the rest
    (a seam, or hard edges, along the border between them)."""
    shared = torch.zeros(mesh.num_verts, dtype=torch.bool)
    shared[mesh.faces[moved].reshape(-1)] = True
    shared &= torch.isin(torch.arange(mesh.num_verts), mesh.faces[~moved].reshape(-1))
    copy_of = torch.full((mesh.num_verts,), -1)
    copy_of[shared] = mesh.num_verts + torch.arange(int(shared.sum()))
    faces = mesh.faces.clone()
    faces[moved] = torch.where(shared[faces[moved]], copy_of[faces[moved]], faces[moved])
    return Mesh(torch.cat([mesh.verts, mesh.verts[shared]]), faces)


def _noisy_sphere() -> Mesh:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    radius = 1.0 + 0.12 * np.random.default_rng(3).standard_normal(len(sphere.vertices))  # a rough surface
    return Mesh(torch.tensor(sphere.vertices * radius[:, None], dtype=torch.float32), torch.tensor(sphere.faces))


def test_seam_copies_on_a_rough_surface_get_the_welded_normals():
    """A noisy sphere cut at seams (faces with x > 0, and z > 0.5, get copies at their borders): every copy's normal
    is the normal of the welded sphere at its position (the area-weighted mean of all faces there)."""
    welded = _noisy_sphere()
    centers = welded.verts[welded.faces].mean(dim=1)
    split = _split_where(_split_where(welded, centers[:, 0] > 0), centers[:, 2] > 0.5)
    assert split.num_verts > welded.num_verts + 20
    faces_at = [[] for _ in range(welded.num_verts)]
    for index, face in enumerate(welded.faces.tolist()):
        for vertex in face:
            faces_at[vertex].append(index)
    verts = welded.verts.double().numpy()
    corners = verts[welded.faces.numpy()]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # area-weighted, independent
    expected = np.array([cross[faces].sum(0) for faces in faces_at])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(unit_vertex_normals(welded), expected, atol=1e-5)
    position = [int(np.flatnonzero((verts == v).all(1))[0]) for v in split.verts.double().numpy()]
    np.testing.assert_allclose(unit_vertex_normals(split), expected[position], atol=1e-5)


def _flat_cube(with_uvs: bool, subdivisions: int = 0) -> Mesh:
    """A unit cube, every triangle with its own three vertices (flat-shaded)."""
    cube = trimesh.creation.box()
    for _ in range(subdivisions):
        cube = cube.subdivide()
    corners = cube.faces.reshape(-1)
    uvs = torch.rand(len(corners), 2, generator=torch.Generator().manual_seed(0)) if with_uvs else None
    verts = torch.tensor(cube.vertices[corners], dtype=torch.float32)
    return Mesh(verts, torch.arange(len(corners)).reshape(-1, 3), uvs=uvs)


@pytest.mark.parametrize(("with_uvs", "subdivisions"), [(False, 0), (True, 0), (True, 2)])
def test_flat_shaded_cube_keeps_its_face_normals(with_uvs, subdivisions):
    """Split at every triangle, also at the flat edges inside each side (2 subdivisions: 8 x 8 triangles a side)."""
    cube = _flat_cube(with_uvs, subdivisions)
    corners = cube.verts[cube.faces].double()
    cross = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    expected = (cross / cross.norm(dim=1, keepdim=True)).repeat_interleave(3, dim=0)
    assert set(map(tuple, expected.round().tolist())) == {
        (1, 0, 0),
        (-1, 0, 0),
        (0, 1, 0),
        (0, -1, 0),
        (0, 0, 1),
        (0, 0, -1),
    }
    np.testing.assert_allclose(unit_vertex_normals(cube), expected.numpy(), atol=1e-6)


def test_previews_shade_with_the_exported_normals():
    """``Mesh.vertex_normals`` (turntables, ``render(mesh)``, the web viewer) are the normals files get: a flat cube
    renders flat (it was shaded round, every copy welded), and they stay differentiable w.r.t. the vertices."""
    cube = _flat_cube(with_uvs=True)
    verts = cube.verts.clone().requires_grad_(True)
    normals = dataclasses.replace(cube, verts=verts).vertex_normals
    np.testing.assert_allclose(normals.detach().numpy(), unit_vertex_normals(cube), atol=1e-6)
    normals[:, 0].sum().backward()
    assert verts.grad is not None and bool(verts.grad.abs().sum() > 0)


def test_cylinder_with_split_caps_keeps_its_cap_edges_hard():
    """A 24-sided cylinder (axis Z) whose caps have their own vertices, its side also cut by a UV seam: cap vertices
    get +-Z; the side's vertices the area-weighted mean of the side's faces at their position (near radial)."""
    tm = trimesh.creation.cylinder(radius=1.0, height=2.0, sections=24)
    mesh = Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces))
    cap = torch.tensor(tm.face_normals[:, 2]).abs() > 0.99
    centers = mesh.verts[mesh.faces].mean(dim=1)
    mesh = _split_where(_split_where(mesh, cap), ~cap & (centers[:, 0] > 0) & (centers[:, 1] > 0))
    got = unit_vertex_normals(mesh)
    verts, faces = mesh.verts.double().numpy(), mesh.faces.numpy()
    cap_vertex, side_vertex = np.zeros(mesh.num_verts, dtype=bool), np.zeros(mesh.num_verts, dtype=bool)
    cap_vertex[faces[cap.numpy()].reshape(-1)] = side_vertex[faces[~cap.numpy()].reshape(-1)] = True
    assert not (cap_vertex & side_vertex).any() and side_vertex.sum() == 48 + 2 * 2
    rim = cap_vertex & (np.linalg.norm(verts[:, :2], axis=1) > 0.99)
    np.testing.assert_allclose(got[rim], np.sign(verts[rim, 2:3]) * [[0, 0, 1]], atol=1e-6)
    corners = verts[faces[~cap.numpy()]]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    for vertex in np.flatnonzero(side_vertex):
        at = (np.abs(corners - verts[vertex]).sum(axis=2) == 0).any(axis=1)  # side faces at its position
        expected = cross[at].sum(0) / np.linalg.norm(cross[at].sum(0))
        np.testing.assert_allclose(got[vertex], expected, atol=1e-5)
        assert expected @ (verts[vertex] * [1, 1, 0]) > np.cos(np.radians(5))  # about radial


def _obj_records(path) -> dict[str, list[list[str]]]:
    records: dict[str, list[list[str]]] = {}
    for line in path.read_text().splitlines():
        tag, *values = line.split()
        records.setdefault(tag, []).append(values)
    return records


def test_textured_obj_shares_positions_across_seams_and_has_smooth_normals(tmp_path):
    """A rough sphere cut at seams, with UVs, a texture and vertex colours: one `v` per distinct position (no colours:
    the texture is written), `vt` per vertex, `vn` the welded sphere's normals, faces `p/t/n`, a smooth group; it
    loads back as written."""
    welded = _noisy_sphere()
    centers = welded.verts[welded.faces].mean(dim=1)
    split = _split_where(welded, centers[:, 0] > 0)
    generator = torch.Generator().manual_seed(1)
    mesh = Mesh(split.verts, split.faces, vertex_colors=torch.rand(split.num_verts, 3, generator=generator),
                uvs=torch.rand(split.num_verts, 2, generator=generator),
                texture=torch.rand(8, 8, 3, generator=generator))  # fmt: skip
    save_mesh(mesh, tmp_path / "ball.obj")
    records = _obj_records(tmp_path / "ball.obj")
    assert len(records["v"]) == welded.num_verts and {len(row) for row in records["v"]} == {3}
    assert len(records["vt"]) == len(records["vn"]) == mesh.num_verts and records["s"] == [["1"]]
    points = np.array(records["v"], dtype=np.float32)  # %.9g: float32 values exact
    corners = np.array([[corner.split("/") for corner in face] for face in records["f"]], dtype=np.int64) - 1
    np.testing.assert_array_equal(corners[..., 1], mesh.faces.numpy())  # vt and vn: the vertex
    np.testing.assert_array_equal(corners[..., 2], mesh.faces.numpy())
    np.testing.assert_array_equal(points[corners[..., 0]], mesh.verts.numpy()[mesh.faces.numpy()])
    np.testing.assert_allclose(np.array(records["vt"], dtype=np.float64), mesh.uvs.numpy(), atol=1e-7)
    verts = welded.verts.double().numpy()
    position = [int(np.flatnonzero((verts == v).all(1))[0]) for v in mesh.verts.double().numpy()]
    expected = unit_vertex_normals(welded)[position]  # the welded normals (checked against numpy above)
    np.testing.assert_allclose(np.array(records["vn"], dtype=np.float64), expected, atol=1e-6)
    loaded = load_mesh(tmp_path / "ball.obj")  # the same corners (trimesh orders vertices by their `v`)
    assert loaded.num_verts == mesh.num_verts
    assert torch.equal(loaded.verts[loaded.faces], mesh.verts[mesh.faces])
    torch.testing.assert_close(loaded.uvs[loaded.faces], mesh.uvs[mesh.faces], rtol=0, atol=1e-7)
    torch.testing.assert_close(loaded.texture, torch.round(mesh.texture * 255) / 255, rtol=0, atol=1e-6)
    assert loaded.vertex_colors is None


def test_flat_colored_cube_obj_keeps_hard_edges_and_colours(tmp_path):
    """A flat-shaded cube (every triangle with its own 3 vertices) with one colour per corner position: 8 `v`
    with colours, `vn` the face normals, faces `p//n`; it loads back with the same corners and colours."""
    cube = _flat_cube(with_uvs=False)
    colors = (cube.verts + 0.5).clamp(0, 1)  # a colour per position
    mesh = Mesh(cube.verts, cube.faces, vertex_colors=colors)
    save_mesh(mesh, tmp_path / "cube.obj")
    records = _obj_records(tmp_path / "cube.obj")
    assert len(records["v"]) == 8 and {len(row) for row in records["v"]} == {6} and "vt" not in records
    points = np.array(records["v"], dtype=np.float64)
    np.testing.assert_allclose(points[:, 3:], points[:, :3] + 0.5, atol=1e-7)
    corners = np.array([[corner.split("/") for corner in face] for face in records["f"]], dtype=object)
    assert (corners[..., 1] == "").all()
    normals = np.array(records["vn"], dtype=np.float64)[corners[..., 2].astype(np.int64) - 1]
    np.testing.assert_allclose(normals, np.repeat(trimesh.creation.box().face_normals[:, None], 3, axis=1), atol=1e-6)
    loaded = load_mesh(tmp_path / "cube.obj")  # the same corners (trimesh orders vertices by their `v`)
    assert loaded.num_verts == mesh.num_verts
    assert torch.equal(loaded.verts[loaded.faces], mesh.verts[mesh.faces])
    torch.testing.assert_close(loaded.vertex_colors[loaded.faces], colors[mesh.faces], rtol=0, atol=1e-6)


def test_glb_node_mesh_and_image_are_named_after_the_file(tmp_path):
    cube = _flat_cube(with_uvs=True)
    textured = Mesh(cube.verts, cube.faces, uvs=cube.uvs, texture=torch.rand(4, 4, 3))
    save_mesh(textured, tmp_path / "mug.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "mug.glb"))
    assert [node.name for node in gltf.nodes] == ["mug"] and [mesh.name for mesh in gltf.meshes] == ["mug"]
    assert [image.name for image in gltf.images] == ["mug"] and gltf.materials[0].name == "material0"
