"""Procedural shapes, synthetic multi-view datasets and their reader (monorecon.data)."""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.spatial import Delaunay, cKDTree

from analytic import linear_to_srgb, srgb_to_linear
from monorecon.core.cameras import orbit_c2w
from monorecon.data import (
    CLASSIC_CLASSES,
    ORGANIC_CLASSES,
    SHAPE_CLASSES,
    ZERO123_FOV_DEG,
    MultiViewDataset,
    ObjaverseConvention,
    ViewSampling,
    camera_distance,
    load_normalized_mesh,
    make_object,
    normalize_vertices,
    synthesize_dataset,
)
from monorecon.io.mesh_io import load_mesh
from paths import SHARED_MESHES

BUNNY = SHARED_MESHES / "bunny.ply"


# --------------------------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------------------------
def _merged(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weld vertices with identical positions (the generator duplicates them along sharp edges)."""
    unique, inverse = np.unique(verts, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)[faces]


def _is_closed_and_oriented(faces: np.ndarray) -> bool:
    """Every directed edge a->b is matched by as many b->a: a union of closed, consistently oriented surfaces."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    forward = {tuple(e): c for e, c in zip(*np.unique(directed, axis=0, return_counts=True), strict=True)}
    return all(forward.get((b, a), 0) == c for (a, b), c in forward.items())


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    tri = verts[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def _ray_cast(origins: np.ndarray, dirs: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force Moller-Trumbore: nearest hit parameter t (inf if none) and face index of each ray."""
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    best_t = np.full(len(origins), np.inf)
    best_face = np.full(len(origins), -1)
    for start in range(0, len(origins), 64):
        o, d = origins[start : start + 64, None], dirs[start : start + 64, None]
        p = np.cross(d, e2)
        det = (e1 * p).sum(-1)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = o - v0
        u = (s * p).sum(-1) * inv
        q = np.cross(s, e1)
        v = (d * q).sum(-1) * inv
        t = (e2 * q).sum(-1) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-9)
        t = np.where(hit, t, np.inf)
        best_t[start : start + 64] = t.min(axis=1)
        best_face[start : start + 64] = np.where(np.isfinite(t.min(axis=1)), t.argmin(axis=1), -1)
    return best_t, best_face


def _pixel_rays(c2w: np.ndarray, fov_y_deg: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """World ray origins and directions (with unit view depth) through the pixel centres of a pinhole camera."""
    focal = 0.5 * size / math.tan(math.radians(fov_y_deg) / 2)
    i, j = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    d_cam = np.stack([(j - size / 2) / focal, -(i - size / 2) / focal, -np.ones_like(i)], -1).reshape(-1, 3)
    return np.broadcast_to(c2w[:3, 3], d_cam.shape), d_cam @ c2w[:3, :3].T


# --------------------------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------------------------
def test_at_least_eight_classes():
    assert len(SHAPE_CLASSES) >= 8
    mesh = SHAPE_CLASSES["mug"](np.random.default_rng(0))
    assert mesh.vertex_colors is not None and mesh.verts.norm(dim=1).max() == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("class_name", sorted(SHAPE_CLASSES))
def test_class_valid_deterministic_upright(class_name):
    a, b, other = make_object(class_name, 7), make_object(class_name, 7), make_object(class_name, 8)
    for name in ("verts", "faces", "vertex_colors"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.verts.shape != other.verts.shape or not torch.equal(a.verts, other.verts)

    verts, faces = a.verts.double().numpy(), a.faces.numpy()
    assert len(faces) <= 5000
    assert 0.0 <= float(a.vertex_colors.min()) and float(a.vertex_colors.max()) <= 1.0
    # Normalised: farthest vertex at radius 0.5, bounding box centred on the origin.
    assert np.linalg.norm(verts, axis=1).max() == pytest.approx(0.5, abs=1e-5)
    np.testing.assert_allclose(verts.min(0) + verts.max(0), 0.0, atol=1e-5)
    # Closed, outward oriented once coincident vertices are welded.
    merged_verts, merged_faces = _merged(verts, faces)
    assert _is_closed_and_oriented(merged_faces)
    assert _signed_volume(merged_verts, merged_faces) > 1e-3
    # Upright: the centre of mass lies above the footprint of the lowest points (it stands on its base).
    com = trimesh.Trimesh(merged_verts, merged_faces, process=False).center_mass
    base = verts[verts[:, 1] < verts[:, 1].min() + 0.01][:, [0, 2]]
    assert Delaunay(base).find_simplex(com[[0, 2]]) >= 0
    assert com[1] > verts[:, 1].min() + 0.05
    # One object: every closed piece touches another, directly or through others (no floating seat, hat or door).
    assert _pieces_are_connected(merged_verts, merged_faces)


def _pieces_are_connected(verts: np.ndarray, faces: np.ndarray, tol: float = 1e-3) -> bool:
    """Whether the bounding boxes of the mesh's connected pieces (closed parts) overlap into one group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(verts), len(verts)))
    n_pieces, labels = connected_components(graph, directed=False)
    low = np.array([verts[labels == i].min(0) for i in range(n_pieces)])
    high = np.array([verts[labels == i].max(0) for i in range(n_pieces)])
    overlap = np.all((low[:, None] <= high[None] + tol) & (low[None] <= high[:, None] + tol), axis=-1)
    return connected_components(overlap, directed=False)[0] == 1


def test_tube_is_a_closed_outward_prism_with_conical_ends():
    from monorecon.data.shapes import _tube

    length, radius, sections = 0.8, 0.1, 64
    path = np.stack([np.zeros(9), np.zeros(9), np.linspace(0.0, length, 9)], -1)
    tm = _tube(path, np.full(9, radius), sections)
    assert tm.is_watertight and tm.is_winding_consistent
    # Regular 64-gon prism plus two cones of height r / 2 on the same polygon.
    polygon = 0.5 * sections * radius**2 * math.sin(2 * math.pi / sections)
    assert tm.volume == pytest.approx(polygon * (length + 2 * radius / 2 / 3), rel=1e-9)
    np.testing.assert_allclose(tm.bounds, [[-radius, -radius, -radius / 2], [radius, radius, length + radius / 2]],
                               atol=1e-9)  # fmt: skip


def test_sculpt_classes_have_their_proportions():
    # Busts are shallow front to back (like real busts and heads), serpents long and low: what they were added for.
    def median_ratio(name, numerator, denominator):
        extents = [np.ptp(make_object(name, seed).verts.numpy(), axis=0) for seed in range(12)]
        return float(np.median([numerator(e) / denominator(e) for e in extents]))

    assert median_ratio("bust", lambda e: e[2], lambda e: e[0]) < 0.8
    assert median_ratio("serpent", lambda e: e[1], lambda e: max(e[0], e[2])) < 0.6


def test_classic_classes_pin_the_documented_datasets():
    # Datasets made before the organic classes (model card stages 1-4) used these classes in this order: object i has
    # class classes[i % 11], so reordering or renaming would silently change them.
    assert CLASSIC_CLASSES == (
        "mug", "chair", "table", "lamp", "vase", "bottle", "snowman", "car", "rocket", "donut", "house"
    )  # fmt: skip
    assert set(SHAPE_CLASSES) - set(CLASSIC_CLASSES) == set(ORGANIC_CLASSES) == {"blob", "critter", "serpent", "bust"}


def test_cli_classic_expands_to_the_classic_classes(tmp_path):
    from monorecon.cli import main

    assert main(["data", "synth", "--n", "13", "--views", "1", "--size", "8", "--classes", "classic,critter",
                 "-o", str(tmp_path / "d"), "--quiet"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "d" / "index.json").read_text())
    assert [o["class"] for o in manifest["objects"]] == [*CLASSIC_CLASSES, "critter", "mug"]
    # The default cameras are where the trainer expects them: TripoSR's input camera distance 1.9, fov 40.
    views = json.loads((tmp_path / "d" / "000000_mug" / "cameras.json").read_text())["views"]
    distance = np.linalg.norm(np.array(views[0]["c2w"])[:3, 3])
    assert views[0]["fov_y_deg"] == 40.0 and math.isclose(distance, 1.9, rel_tol=1e-6)


def test_stretched_objects_keep_their_seeds_and_scale_x_and_z(tmp_path):
    args = {"n_objects": 3, "n_views": 1, "size": 8, "seed": 4, "progress": False, "classes": ["vase", "chair"]}
    plain = json.loads((synthesize_dataset(tmp_path / "plain", **args) / "index.json").read_text())["objects"]
    root = synthesize_dataset(tmp_path / "stretched", **args, stretch=1.5)
    assert json.loads((root / "index.json").read_text())["objects"] == plain  # same objects, seeds and splits
    for entry in plain:
        meta = json.loads((root / entry["path"] / "meta.json").read_text())
        fx, fz = meta["stretch_xz"]
        assert 1 / 1.5 <= fx <= 1.5 and 1 / 1.5 <= fz <= 1.5 and fx != fz
        extent = lambda verts: verts.max(0) - verts.min(0)  # noqa: E731
        original = extent(make_object(entry["class"], entry["seed"]).verts.double().numpy())
        stretched = extent(load_mesh(root / entry["path"] / "mesh.ply").verts.double().numpy())
        ratio = stretched / original
        assert ratio[0] / ratio[1] == pytest.approx(fx, rel=1e-4) and ratio[2] / ratio[1] == pytest.approx(fz, rel=1e-4)
        assert np.linalg.norm(load_mesh(root / entry["path"] / "mesh.ply").verts.numpy(), axis=1).max() <= 0.5 + 1e-5
        colors = trimesh.load(root / entry["path"] / "mesh.ply", process=False).visual.vertex_colors[:, :3] / 255
        expected = make_object(entry["class"], entry["seed"]).vertex_colors.numpy()
        np.testing.assert_allclose(colors, expected, atol=0.5 / 255 + 1e-6)  # stretching keeps the colours
    for bad in (1.0, 0.5, float("nan")):
        with pytest.raises(ValueError, match="stretch must be"):
            synthesize_dataset(tmp_path / "bad", **args, stretch=bad)
    # Resuming never mixes stretched and unstretched objects.
    for folder, stretch in ((root, None), (root, 1.2), (tmp_path / "plain", 1.5)):
        with pytest.raises(ValueError, match="not made with these arguments"):
            synthesize_dataset(folder, **args, stretch=stretch)
    synthesize_dataset(root, **args, stretch=1.5)  # the same arguments resume


def test_elevation_range_is_drawn_recorded_and_checked_on_resume(tmp_path):
    from monorecon.cli import main

    out = tmp_path / "high"
    argv = ["data", "synth", "--n", "2", "--views", "6", "--size", "8", "--elevations", "50", "60", "-o", str(out)]
    assert main([*argv, "--quiet"]) == 0
    for entry in json.loads((out / "index.json").read_text())["objects"]:
        assert json.loads((out / entry["path"] / "meta.json").read_text())["elevation_range_deg"] == [50.0, 60.0]
        for view in json.loads((out / entry["path"] / "cameras.json").read_text())["views"]:
            position = np.array(view["c2w"])[:3, 3]  # the camera's height above the object's centre, +Y up
            assert 50.0 <= math.degrees(math.asin(position[1] / np.linalg.norm(position))) <= 60.0
    args = {"n_objects": 2, "n_views": 6, "size": 8, "seed": 0, "progress": False}
    with pytest.raises(ValueError, match="not made with these arguments"):  # views from another range are not mixed in
        synthesize_dataset(out, **args)
    synthesize_dataset(out, **args, sampling=ViewSampling.at_distance(1.9, elevation_range_deg=(50.0, 60.0)))
    # The default range is not recorded, so datasets made before the option existed still resume.
    synthesize_dataset(tmp_path / "default", **{**args, "n_objects": 1})
    assert "elevation_range_deg" not in json.loads((tmp_path / "default" / "000000_mug" / "meta.json").read_text())
    default_as_list = ViewSampling(elevation_range_deg=[-10, 40])
    synthesize_dataset(tmp_path / "default", **{**args, "n_objects": 1}, sampling=default_as_list)  # resumes


def test_classes_differ():
    clouds = {}
    for name in sorted(SHAPE_CLASSES):
        mesh = make_object(name, 0)
        tm = trimesh.Trimesh(mesh.verts.double().numpy(), mesh.faces.numpy(), process=False)
        clouds[name] = trimesh.sample.sample_surface(tm, 1500, seed=0)[0]
    names = sorted(clouds)
    for i, p in enumerate(names):
        for q in names[i + 1 :]:
            a, b = clouds[p], clouds[q]
            chamfer = cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()
            assert chamfer > 0.03, (p, q, chamfer)


def test_fronts_face_plus_z():
    chair = make_object("chair", 3).verts.numpy()
    top = chair[chair[:, 1] > chair[:, 1].max() - 0.1]
    assert top[:, 2].mean() < -0.1  # the backrest is at the back (-Z)
    car = make_object("car", 3)
    headlight = np.all(np.isclose(car.vertex_colors.numpy(), [1.0, 0.95, 0.6], atol=1e-3), axis=1)
    assert headlight.any() and car.verts.numpy()[headlight, 2].min() > 0.2  # headlights at the front (+Z)
    snowman = make_object("snowman", 3)
    nose = np.all(np.isclose(snowman.vertex_colors.numpy(), [1.0, 0.5, 0.1], atol=1e-3), axis=1)
    nose_verts = snowman.verts.numpy()[nose]
    assert nose.any() and nose_verts[:, 2].min() > 0.05  # the carrot nose sticks out towards +Z
    assert np.abs(nose_verts[:, 0]).max() < 0.5 * np.ptp(nose_verts[:, 2])


def test_make_object_bad_input():
    with pytest.raises(ValueError, match="unknown shape class"):
        make_object("spaceship", 0)
    for seed in (-1, True, 1.5):
        with pytest.raises(ValueError, match="seed"):
            make_object("mug", seed)


def test_normalize_vertices_known_values():
    corners = np.array([[x, y, z] for x in (0, 2) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    # Centre (1, 0.5, 0.5); half diagonal sqrt(1 + 0.25 + 0.25) scaled to 0.5.
    expected = (corners - [1.0, 0.5, 0.5]) * 0.5 / math.sqrt(1.5)
    np.testing.assert_allclose(normalize_vertices(corners), expected, atol=1e-12)
    for bad, match in ((np.zeros((0, 3)), "shape"), (np.full((3, 3), np.nan), "NaN"), (np.ones((4, 3)), "zero")):
        with pytest.raises(ValueError, match=match):
            normalize_vertices(bad)
    with pytest.raises(ValueError, match="radius"):
        normalize_vertices(corners, radius=0.0)


def test_load_normalized_mesh_keeps_orientation(tmp_path):
    original = trimesh.load(BUNNY, process=False, force="mesh").vertices
    mesh = load_normalized_mesh(BUNNY)
    verts = mesh.verts.double().numpy()
    # The result is a positive scaling plus a translation of the file's vertices (no rotation, no flip).
    design = np.concatenate([original.reshape(-1, 1), np.tile(np.eye(3), (len(original), 1))], axis=1)
    (scale, *shift), *_ = np.linalg.lstsq(design, verts.reshape(-1), rcond=None)
    assert scale > 0
    np.testing.assert_allclose(original * scale + shift, verts, atol=1e-5)
    assert np.linalg.norm(verts, axis=1).max() == pytest.approx(0.5, abs=1e-5)
    np.testing.assert_allclose(mesh.vertex_colors.numpy(), 0.7, atol=1e-6)  # no colours in the file: default grey
    with pytest.raises(ValueError, match="not found"):
        load_normalized_mesh(tmp_path / "missing.ply")


@pytest.mark.parametrize("ext", ["glb", "obj"])
def test_load_normalized_mesh_keeps_the_texture(tmp_path, ext):
    """A textured file (written by trimesh) keeps its UVs and image, and gets no grey in their place. trimesh's GLB
    gives the texture a baseColorFactor of 0.4, which glTF multiplies into it (linear values), as viewers show it."""
    rng = np.random.default_rng(0)
    box = trimesh.creation.box((1.0, 2.0, 3.0))
    uvs = rng.random((len(box.vertices), 2))
    pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # not square: an H / W swap shows
    box.visual = trimesh.visual.TextureVisuals(uv=uvs, image=Image.fromarray(pixels))
    box.export(tmp_path / f"box.{ext}")
    mesh = load_normalized_mesh(tmp_path / f"box.{ext}")
    assert mesh.vertex_colors is None
    np.testing.assert_allclose(mesh.uvs.numpy(), uvs, atol=1e-6)
    expected = pixels if ext == "obj" else np.round(linear_to_srgb(srgb_to_linear(pixels / 255) * 0.4) * 255)
    np.testing.assert_allclose(np.round(mesh.texture.numpy() * 255), expected, atol=1)


# --------------------------------------------------------------------------------------------------------------------
# Synthesis and reading back
# --------------------------------------------------------------------------------------------------------------------
def test_camera_distance_analytic():
    # fov 90: tan(a) = fill * 1 = 0.5, sin(a) = 0.5 / sqrt(1.25) -> distance = 0.5 * sqrt(1.25) / 0.5.
    assert camera_distance(90.0, 0.5, 0.5) == pytest.approx(math.sqrt(1.25))
    for bad in ((0.0, 0.5, 0.5), (40.0, -1.0, 0.5), (40.0, 0.5, 0.0)):
        with pytest.raises(ValueError):
            camera_distance(*bad)
    with pytest.raises(ValueError, match="elevation_range_deg"):
        ViewSampling(elevation_range_deg=(10.0, -10.0))


def test_tiny_dataset_reads_back(tiny_dataset):
    index = json.loads((tiny_dataset / "index.json").read_text())
    assert [o["class"] for o in index["objects"]] == ["mug", "chair"]
    assert (tiny_dataset / "manifest.csv").read_text().splitlines()[0] == "id,class,split,seed,path"
    assert not [p for p in tiny_dataset.iterdir() if p.name.startswith(".")]  # no temporary folders left
    ds = MultiViewDataset(tiny_dataset, split="all")
    assert len(ds) == 2
    item = ds[1]
    assert item["images"].shape == (2, 32, 32, 4) and item["images"].dtype == torch.float32
    assert item["depth"].shape == (2, 32, 32) and item["normals"].shape == (2, 32, 32, 3)
    assert item["class_name"] == "chair" and item["has_depth"] and Path(item["mesh_path"]).is_file()
    np.testing.assert_allclose(item["fov_y_deg"].numpy(), 40.0)
    c2w = item["c2w"].double()
    distance = 1.9  # the default: TripoSR's input camera, which training and evaluation expect
    np.testing.assert_allclose(c2w[:, :3, 3].norm(dim=-1).numpy(), distance, rtol=1e-5)
    assert camera_distance(40.0, fill=ViewSampling().fill) == pytest.approx(distance)
    # Cameras look at the origin: the "back" axis points from the origin to the camera.
    np.testing.assert_allclose(c2w[:, :3, 2].numpy(), (c2w[:, :3, 3] / distance).numpy(), atol=1e-5)
    # Straight alpha with colour 0 on the background; alpha is hard coverage.
    images = item["images"]
    assert set(torch.unique(images[..., 3]).tolist()) <= {0.0, 1.0}
    assert float(images[..., :3][images[..., 3] == 0].abs().max()) == 0.0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["images"].shape == (2, 2, 32, 32, 4) and batch["class_name"] == ["mug", "chair"]
    split_sizes = [len(MultiViewDataset(tiny_dataset, s)) for s in ("train", "val", "test") if _has_split(ds, s)]
    assert sum(split_sizes) == 2


def _has_split(ds: MultiViewDataset, split: str) -> bool:
    index = json.loads((ds.root / "index.json").read_text())
    return any(o["split"] == split for o in index["objects"])


def test_depth_and_alpha_match_ray_casting(tiny_dataset):
    ds = MultiViewDataset(tiny_dataset, split="all")
    mismatched = total = 0
    for item in ds:
        tm = trimesh.load(item["mesh_path"], process=False, force="mesh")  # read by trimesh, not our loader
        tri = np.asarray(tm.vertices, dtype=np.float64)[np.asarray(tm.faces)]
        face_normals = np.asarray(tm.face_normals)
        for view in range(len(item["c2w"])):
            origins, dirs = _pixel_rays(item["c2w"][view].double().numpy(), float(item["fov_y_deg"][view]), 32)
            t, face = _ray_cast(origins, dirs, tri)
            hit = np.isfinite(t)
            alpha = item["images"][view, ..., 3].numpy().reshape(-1) > 0.5
            depth = item["depth"][view].numpy().reshape(-1)
            mismatched += int((hit != alpha).sum())
            total += hit.size
            both = hit & alpha
            assert both.sum() > 50
            # Directions have unit view depth, so the ray parameter is the view depth.
            np.testing.assert_allclose(depth[both], t[both], atol=1e-5)
            assert (depth[~alpha] == 0).all()
            normals = item["normals"][view].numpy().reshape(-1, 3)[both]
            # Smooth normals stay within a facet angle of the hit face's normal; hard edges are not rounded off.
            agreement = (normals * face_normals[face[both]]).sum(-1)
            assert np.median(agreement) > 0.99 and agreement.min() > 0.9
    assert mismatched <= 0.002 * total  # only pixel centres grazing a silhouette edge may differ


def test_synthesis_deterministic_and_resumable(tiny_dataset, tmp_path):
    again = synthesize_dataset(tmp_path / "again", n_objects=2, n_views=2, size=32, seed=3, progress=False)
    for path in sorted(tiny_dataset.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (again / path.relative_to(tiny_dataset)).read_bytes(), path
    stamp = (again / "000000_mug" / "rgba" / "000.png").stat().st_mtime_ns
    synthesize_dataset(again, n_objects=3, n_views=2, size=32, seed=3, progress=False)  # resumes, adds one object
    assert (again / "000000_mug" / "rgba" / "000.png").stat().st_mtime_ns == stamp
    assert len(MultiViewDataset(again, "all")) == 3
    for change in ({"n_views": 3}, {"size": 16}):  # other views, or images of another size, are another dataset
        with pytest.raises(ValueError, match="not made with these arguments"):
            synthesize_dataset(again, **{"n_objects": 3, "n_views": 2, "size": 32, "seed": 3, **change}, progress=False)
    other = synthesize_dataset(tmp_path / "other", n_objects=1, n_views=2, size=32, seed=4, progress=False)
    assert (other / "000000_mug" / "cameras.json").read_bytes() != (again / "000000_mug" / "cameras.json").read_bytes()


def test_resume_refuses_other_cameras(tmp_path):
    """Objects drawn at another camera distance or fov are another dataset: resuming with them is refused, not mixed
    in (the CLI's --camera-distance)."""
    from monorecon.cli import main

    out = tmp_path / "d"
    argv = ["data", "synth", "--views", "1", "--size", "8", "-o", str(out), "--quiet"]
    assert main([*argv, "--n", "1"]) == 0
    assert main([*argv, "--n", "2", "--camera-distance", "3"]) == 2
    assert not (out / "000001_chair").exists()
    args = {"n_objects": 2, "n_views": 1, "size": 8, "seed": 0, "progress": False}
    with pytest.raises(ValueError, match="not made with these arguments"):
        synthesize_dataset(out, **args, sampling=ViewSampling.at_distance(1.9, fov_y_deg=45.0))
    synthesize_dataset(out, **args, sampling=ViewSampling.at_distance(1.9))  # the same cameras resume
    distances = [
        json.loads((out / o / "cameras.json").read_text())["views"][0]["distance"]
        for o in ("000000_mug", "000001_chair")
    ]
    assert distances == pytest.approx([1.9, 1.9])


@pytest.mark.parametrize(("fractions", "split"), [((1, 0, 0), "train"), ((0, 1, 0), "val"), ((0, 0, 1), "test")])
def test_split_fractions_name_the_splits(tmp_path, fractions, split):
    """All of one split's probability puts every object in that split, by name, and the reader selects them."""
    root = synthesize_dataset(tmp_path / split, 2, 1, 8, seed=0, progress=False, split_fractions=fractions)
    entries = json.loads((root / "index.json").read_text())["objects"]
    assert [entry["split"] for entry in entries] == [split, split]
    assert len(MultiViewDataset(root, split=split)) == 2


def test_views_are_drawn_all_around_the_object(tmp_path):
    """Azimuths are uniform over the whole circle: 16 views of an object fall in each of its four quadrants."""
    c2w = MultiViewDataset(synthesize_dataset(tmp_path / "d", 1, 16, 8, seed=3, progress=False), split="all")[0]["c2w"]
    azimuths = np.degrees(np.arctan2(c2w[:, 0, 3].numpy(), c2w[:, 2, 3].numpy())) % 360  # 0 at +Z, 90 at +X
    assert set((azimuths // 90).astype(int).tolist()) == {0, 1, 2, 3}


def test_synthesize_bad_arguments(tmp_path):
    good = {"n_objects": 1, "n_views": 1, "size": 8, "seed": 0, "progress": False}
    for change, match in (
        ({"n_objects": 0}, "n_objects"),
        ({"size": -4}, "size"),
        ({"size": 100_000}, r"size must lie in \[1, 2048\]"),
        ({"n_views": 10**6}, "n_views"),
        ({"n_objects": 2.5}, "n_objects must be an integer"),
        ({"seed": -1}, "seed"),
        ({"classes": ["spaceship"]}, "spaceship"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions"),
    ):
        with pytest.raises(ValueError, match=match):
            synthesize_dataset(tmp_path / "bad", **{**good, **change})
        assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_missing_and_corrupt_files_are_skipped(tiny_dataset, tmp_path):
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))
    missing = root / "000000_mug" / "rgba" / "001.png"
    missing.unlink()
    with pytest.warns(UserWarning, match=re.escape(str(missing))):
        ds = MultiViewDataset(root, split="all")
    assert [o.object_id for o in ds.objects] == ["000001_chair"]

    truncated = root / "000001_chair" / "rgba" / "000.png"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning) as caught, pytest.raises(ValueError, match="no usable object"):
        MultiViewDataset(root, split="all")
    messages = " ".join(str(w.message) for w in caught)
    assert f"missing or empty file {missing}" in messages and f"cannot read image {truncated}" in messages
    # Without the up-front check, the damaged file is reported when its item is read, never used.
    with pytest.warns(UserWarning, match=re.escape(str(missing))):
        lazy = MultiViewDataset(root, split="all", verify=False)
    with pytest.raises(ValueError, match=re.escape(str(truncated))):
        lazy[0]

    truncated.write_bytes(data)
    depth = root / "000001_chair" / "depth" / "001.npz"
    depth.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning) as caught, pytest.raises(ValueError, match="no usable object"):
        MultiViewDataset(root, split="all")
    assert any(str(depth) in str(w.message) for w in caught)

    shutil.copy(tiny_dataset / "000001_chair" / "depth" / "001.npz", depth)
    mesh = root / "000001_chair" / "mesh.ply"
    mesh.write_bytes(mesh.read_bytes()[:100])
    with pytest.warns(UserWarning) as caught, pytest.raises(ValueError, match="no usable object"):
        MultiViewDataset(root, split="all")
    assert any(str(mesh) in str(w.message) for w in caught)


def _negative_depth(path: Path) -> None:
    with np.load(path) as data:
        depth = data["depth"].copy()
    depth[0, 0] = -0.5
    np.savez_compressed(path, depth=depth)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda obj: (obj / "normals" / "001.png").unlink(), "missing or empty file {obj}/normals/001.png"),
        (
            lambda obj: _negative_depth(obj / "depth" / "000.npz"),
            "depth file {obj}/depth/000.npz must hold finite non-negative depths: 1 pixels are NaN, infinite or < 0",
        ),
    ],
)
def test_damaged_normals_and_depth_skip_their_object(tiny_dataset, tmp_path, damage, message):
    """Normal maps are checked like the images; a negative depth (a depth is a distance along the view) is refused."""
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))
    damage(root / "000001_chair")
    with pytest.warns(UserWarning, match=re.escape(message.format(obj=root / "000001_chair"))):
        ds = MultiViewDataset(root, split="all")
    assert [o.object_id for o in ds.objects] == ["000000_mug"]


def test_index_of_another_version_is_refused(tiny_dataset, tmp_path):
    """A newer writer's layout may mean other things by the same files: refused, not guessed."""
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))
    index = json.loads((root / "index.json").read_text())
    index["version"] += 1
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"has version {index['version']}, this reader reads {index['version'] - 1}"):
        MultiViewDataset(root, split="all")


@pytest.mark.parametrize(("noise", "accepted"), [(4e-4, True), (5e-3, False)])
def test_rotations_are_accepted_within_the_stored_precision(tiny_dataset, tmp_path, noise, accepted):
    """A rotation written with a few decimals (other tools' JSON) is still a rotation; a skewed one is not."""
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))
    cameras_path = root / "000000_mug" / "cameras.json"
    cameras = json.loads(cameras_path.read_text())
    cameras["views"][0]["c2w"][0][1] += noise  # R^T R is off the identity by about the noise
    cameras_path.write_text(json.dumps(cameras))
    if accepted:
        assert len(MultiViewDataset(root, split="all")) == 2
    else:
        with pytest.warns(UserWarning, match="not a rotation"):
            assert len(MultiViewDataset(root, split="all")) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda view: view["c2w"][0].__setitem__(0, 3.0), "a c2w matrix is not a rotation and a translation"),
        (lambda view: view["c2w"][3].__setitem__(0, 1.0), "a c2w matrix is not a rotation and a translation"),
        (lambda view: view.__setitem__("fov_y_deg", 0.0), r"fov_y_deg must lie in \(0, 180\)"),
        (lambda view: view.__setitem__("fov_y_deg", float("nan")), r"fov_y_deg must lie in \(0, 180\)"),
    ],
)
def test_cameras_that_are_not_a_camera_skip_their_object(tiny_dataset, tmp_path, change, message):
    """Finite but wrong: a scaled rotation, a projective bottom row, a fov of 0 or NaN (JSON allows NaN)."""
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))
    cameras_path = root / "000000_mug" / "cameras.json"
    cameras = json.loads(cameras_path.read_text())
    change(cameras["views"][1])
    cameras_path.write_text(json.dumps(cameras))
    with pytest.warns(UserWarning, match=f"{re.escape(str(cameras_path))}: {message}"):
        ds = MultiViewDataset(root, split="all")
    assert [o.object_id for o in ds.objects] == ["000001_chair"]


def test_index_entries_that_leave_the_root_or_repeat_are_skipped(tiny_dataset, tmp_path):
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))
    index = json.loads((root / "index.json").read_text())
    first = index["objects"][0]
    index["objects"] += [dict(first), {**first, "id": f"../../{tiny_dataset.name}/{first['id']}"}]
    (root / "index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning) as caught:
        ds = MultiViewDataset(root, split="all")
    messages = " ".join(str(w.message) for w in caught)
    assert f"skipping object {first['id']!r}" in messages and "listed twice" in messages
    assert "not a folder name" in messages
    assert [o.object_id for o in ds.objects] == [entry["id"] for entry in index["objects"][:-2]]


def test_reader_bad_roots_and_arguments(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="no usable object"):
        MultiViewDataset(tmp_path, split="all")
    with pytest.raises(ValueError, match="not found"):
        MultiViewDataset(tmp_path / "missing", split="all")
    with pytest.raises(ValueError, match="split"):
        MultiViewDataset(tiny_dataset, split="training")
    with pytest.raises(ValueError, match="max_views"):
        MultiViewDataset(tiny_dataset, split="all", max_views=0)
    assert MultiViewDataset(tiny_dataset, split="all", max_views=1)[0]["images"].shape[0] == 1
    with pytest.warns(UserWarning, match="fewer than max_views"), pytest.raises(ValueError, match="no usable"):
        MultiViewDataset(tiny_dataset, split="all", max_views=3)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"index\.json"):
        MultiViewDataset(tmp_path, split="all")


# --------------------------------------------------------------------------------------------------------------------
# Objaverse-style (zero123) folders
# --------------------------------------------------------------------------------------------------------------------
def _zero123_w2c(location_blender: np.ndarray) -> np.ndarray:
    """3x4 world-to-camera of a Blender camera at ``location`` tracking the origin (-Z forward, Y up, world Z up)."""
    back = location_blender / np.linalg.norm(location_blender)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    rot = np.stack([right, up, back], axis=1)  # camera-to-world rotation
    return np.concatenate([rot.T, -(rot.T @ location_blender)[:, None]], axis=1)


def _write_objaverse_object(folder: Path, matrices: list[np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for i, matrix in enumerate(matrices):
        pixels = np.zeros((16, 16, 4 if i == 0 else 3), dtype=np.uint8)
        pixels[4:12, 4:12] = 200
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        np.save(folder / f"{i:03d}.npy", matrix)


def test_objaverse_zero123_convention(tmp_path):
    assert ZERO123_FOV_DEG == pytest.approx(49.1343, abs=1e-3)  # 2 atan(16 / 35): 35 mm lens, 32 mm sensor
    # Blender locations and the same cameras in monorecon's frame: (x, y, z)_blender -> (x, z, -y).
    locations = [np.array([0.0, -2.0, 0.0]), np.array([1.5, 0.0, 0.0]), np.array([0.0, -1.0, 1.0])]
    expected = [orbit_c2w(0.0, 0.0, 2.0), orbit_c2w(90.0, 0.0, 1.5), orbit_c2w(0.0, 45.0, math.sqrt(2.0))]
    _write_objaverse_object(tmp_path / "uid_a", [_zero123_w2c(p) for p in locations])
    _write_objaverse_object(tmp_path / ".cache", [np.ones((3, 4))])  # a tool's hidden folder: not an object
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and not reported as a skipped one either
        dataset = MultiViewDataset(tmp_path, split="all")
    assert [o.object_id for o in dataset.objects] == ["uid_a"]
    item = dataset[0]
    for got, want in zip(item["c2w"], expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(item["fov_y_deg"].numpy(), ZERO123_FOV_DEG, rtol=1e-6)
    assert item["images"].shape == (3, 16, 16, 4) and not item["has_depth"] and item["mesh_path"] == ""
    assert float(item["images"][1, 0, 0, 3]) == 1.0  # RGB file: opaque
    assert float(item["images"][0, 0, 0, 3]) == 0.0 and float(item["images"][0, 8, 8, 3]) == pytest.approx(200 / 255)
    with pytest.raises(ValueError, match="only split='all'"):
        MultiViewDataset(tmp_path, split="train")


def test_objaverse_other_conventions_and_bad_files(tmp_path):
    want = orbit_c2w(30.0, 20.0, 1.8)[0].double().numpy()
    opencv_c2w = want @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes: y down, looking down +z
    _write_objaverse_object(tmp_path / "good", [opencv_c2w])
    convention = ObjaverseConvention(matrix="c2w", camera_axes="opencv", world_up="y", fov_y_deg=30.0)
    _write_objaverse_object(tmp_path / "skewed", [np.ones((3, 4))])
    _write_objaverse_object(tmp_path / "broken", [np.eye(4)])
    (tmp_path / "broken" / "000.npy").write_bytes(b"garbage")
    _write_objaverse_object(tmp_path / "empty", [np.eye(4)])
    (tmp_path / "empty" / "000.npy").write_bytes(b"")  # np.load raises EOFError
    with pytest.warns(UserWarning) as caught:
        ds = MultiViewDataset(tmp_path, split="all", objaverse=convention)
    messages = " ".join(str(w.message) for w in caught)
    assert "skewed" in messages and "orthonormal" in messages and "broken" in messages
    assert f"cannot read camera file {tmp_path / 'empty' / '000.npy'}" in messages
    assert [o.object_id for o in ds.objects] == ["good"]
    np.testing.assert_allclose(ds[0]["c2w"][0].double().numpy(), want, atol=1e-6)
    assert ds[0]["fov_y_deg"].tolist() == [30.0]  # the convention's, not zero123's
    with pytest.raises(ValueError, match="camera_axes"):
        ObjaverseConvention(camera_axes="directx")


def test_workers_write_the_same_dataset_as_one_process(tmp_path):
    from monorecon.cli import main

    args = {"n_objects": 5, "n_views": 2, "size": 16, "seed": 9, "progress": False, "stretch": 2.0}
    one = synthesize_dataset(tmp_path / "one", **args)
    two = synthesize_dataset(tmp_path / "two", **args, workers=2)

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    written = files(one)
    assert len(written) > 5 * 4 and files(two) == written  # every image, depth map, mesh and JSON, byte for byte
    synthesize_dataset(tmp_path / "two", **args, workers=2)  # resumes
    with pytest.raises(ValueError, match="not made with these arguments"):  # workers check existing folders too
        synthesize_dataset(tmp_path / "two", **{**args, "stretch": None}, workers=2)
    for bad in (0, -1, 257, 1.5, True):
        with pytest.raises(ValueError, match=r"workers must (be|lie)"):
            synthesize_dataset(tmp_path / "bad", **args, workers=bad)
    assert main(["data", "synth", "--n", "1", "--workers", "0", "-o", str(tmp_path / "cli"), "--quiet"]) == 2
    assert not (tmp_path / "cli").exists()


# --------------------------------------------------------------------------------------------------------------------
# The documented format's details against closed forms and counts
# --------------------------------------------------------------------------------------------------------------------
def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_cameras_json_fields_describe_the_pose(tiny_dataset):
    """Each view's azimuth, elevation, distance and fov are those of its c2w: the camera at
    d (cos e sin a, sin e, cos e cos a) (azimuth 0 at +Z, 90 at +X), looking at the origin with +Y up, columns
    [right, up, back, position]; d = 1.9 by default, the fill recorded the one the documented formula turns into it:
    0.5 / sin(atan(fill tan(20 deg)))."""
    distance = 1.9
    for folder in ("000000_mug", "000001_chair"):
        cameras = json.loads((tiny_dataset / folder / "cameras.json").read_text())
        assert cameras["image_size"] == [32, 32] and cameras["znear"] == 0.05 and cameras["zfar"] == 100.0
        sampling = cameras["sampling"]
        assert sampling["fov_y_deg"] == 40.0
        assert 0.5 / math.sin(math.atan(sampling["fill"] * math.tan(math.radians(20.0)))) == pytest.approx(distance)
        assert sampling["elevation_range_deg"] == [-10.0, 40.0]
        assert len(cameras["views"]) == 2
        for view in cameras["views"]:
            assert 0.0 <= view["azimuth_deg"] < 360.0 and -10.0 <= view["elevation_deg"] <= 40.0
            assert view["fov_y_deg"] == 40.0 and view["distance"] == pytest.approx(distance, rel=1e-9)
            az, el = math.radians(view["azimuth_deg"]), math.radians(view["elevation_deg"])
            back = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
            right = _unit(np.cross([0.0, 1.0, 0.0], back))
            want = np.eye(4)
            want[:3, :4] = np.stack([right, np.cross(back, right), back, distance * back], axis=1)
            np.testing.assert_allclose(np.array(view["c2w"]), want, atol=1e-5)


def test_light_is_in_the_upper_hemisphere_and_slightly_tinted_white(tiny_dataset):
    """ViewSampling's defaults: light elevation in [15, 75] deg, ambient max in [0.3, 0.5], diffuse max in [0.5, 0.7],
    specular 0.15, one tint (white with saturation at most 0.2) for all three."""
    for folder in ("000000_mug", "000001_chair"):
        light = json.loads((tiny_dataset / folder / "cameras.json").read_text())["light"]
        direction = np.array(light["direction"])
        assert np.linalg.norm(direction) == pytest.approx(1.0)
        assert math.sin(math.radians(15.0)) - 1e-9 <= direction[1] <= math.sin(math.radians(75.0)) + 1e-9
        ambient, diffuse, specular = (np.array(light[k]) for k in ("ambient_color", "diffuse_color", "specular_color"))
        assert 0.3 <= ambient.max() <= 0.5 and 0.5 <= diffuse.max() <= 0.7
        assert specular.max() == pytest.approx(0.15)
        tint = specular / specular.max()
        assert tint.min() >= 0.8 - 1e-9
        np.testing.assert_allclose(ambient / ambient.max(), tint, atol=1e-9)
        np.testing.assert_allclose(diffuse / diffuse.max(), tint, atol=1e-9)


def test_a_sphere_renders_to_its_closed_form_depth_normals_and_shading(tmp_path):
    """write_object on a fine sphere of radius 0.5: depth is the ray-sphere distance along the optical axis, the
    normal PNG holds (n + 1) / 2 with n = hit / 0.5 and black outside, alpha is hard, colour 0 outside, and the side
    facing the stored light direction is lit (the shading used that light)."""
    from monorecon.core.mesh import Mesh
    from monorecon.data.synth import write_object

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    colors = torch.full((len(sphere.vertices), 3), 0.6)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces), vertex_colors=colors)
    folder = write_object(mesh, tmp_path / "sphere", n_views=3, size=32, seed=0)
    cameras = json.loads((folder / "cameras.json").read_text())
    light = cameras["light"]
    facings, brightness = [], []
    for k, view in enumerate(cameras["views"]):
        origins, dirs = _pixel_rays(np.array(view["c2w"]), view["fov_y_deg"], 32)  # unit view depth
        a, b = (dirs * dirs).sum(-1), 2.0 * (origins * dirs).sum(-1)
        discriminant = {r: b * b - 4.0 * a * ((origins * origins).sum(-1) - r * r) for r in (0.5, 0.49)}
        outside, inside = discriminant[0.5] < 0, discriminant[0.49] > 0  # the inscribed polyhedron lies in between
        t = (-b - np.sqrt(np.maximum(discriminant[0.5], 0.0))) / (2.0 * a)
        rgba = np.asarray(Image.open(folder / "rgba" / f"{k:03d}.png"), dtype=np.float64).reshape(-1, 4) / 255
        normals_png = np.asarray(Image.open(folder / "normals" / f"{k:03d}.png"), dtype=np.float64).reshape(-1, 3)
        with np.load(folder / "depth" / f"{k:03d}.npz") as data:
            depth = data["depth"].reshape(-1)
        assert inside.sum() > 100 and outside.sum() > 100
        assert (rgba[inside, 3] == 1.0).all() and (rgba[outside] == 0.0).all()
        assert (depth[outside] == 0.0).all() and (normals_png[outside] == 0.0).all()
        np.testing.assert_allclose(depth[inside], t[inside], atol=2e-3)
        normal = (origins + t[:, None] * dirs)[inside] / 0.5
        np.testing.assert_allclose(normals_png[inside] / 255 * 2.0 - 1.0, normal, atol=0.03)
        facings.append(normal @ np.array(light["direction"]))
        brightness.append(rgba[inside, :3].mean(-1) / 0.6)
    # Lambert: brightness = ambient + diffuse max(0, n . l) (+ a specular highlight), so it rises with n . l at a
    # slope near the diffuse intensity; against a wrong light direction it would not.
    facing, brightness = np.concatenate(facings), np.concatenate(brightness)
    slope = np.polyfit(np.maximum(facing, 0.0), brightness, 1)[0]
    assert slope > 0.8 * np.mean(light["diffuse_color"])


def test_meta_index_and_manifest_agree_with_the_files(tiny_dataset):
    """meta.json's counts are the PLY's, the PLY is make_object(class, seed), the index lists the sorted class set,
    the manifest repeats the index's objects, and object folders are readable by everyone like any folder."""
    import csv

    index = json.loads((tiny_dataset / "index.json").read_text())
    assert {k: index[k] for k in ("format", "version", "seed", "n_views", "image_size")} == {
        "format": "monorecon-multiview", "version": 1, "seed": 3, "n_views": 2, "image_size": [32, 32]
    }  # fmt: skip
    assert index["classes"] == sorted(SHAPE_CLASSES)
    with open(tiny_dataset / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{k: str(v) for k, v in entry.items()} for entry in index["objects"]]
    for entry in index["objects"]:
        folder = tiny_dataset / entry["path"]
        meta = json.loads((folder / "meta.json").read_text())
        tm = trimesh.load(folder / "mesh.ply", process=False, force="mesh")
        assert meta["num_verts"] == len(tm.vertices) and meta["num_faces"] == len(tm.faces)
        np.testing.assert_allclose(tm.vertices, make_object(entry["class"], entry["seed"]).verts.numpy(), atol=1e-6)
        expected = {"format": "monorecon-multiview", "version": 1, "id": entry["id"], "class": entry["class"],
                    "split": entry["split"], "seed": entry["seed"], "n_views": 2, "image_size": [32, 32],
                    "source": "procedural"}  # fmt: skip
        assert {k: meta.get(k) for k in expected} == expected and isinstance(meta["view_seed"], int)
        assert sorted(p.name for p in (folder / "rgba").iterdir()) == ["000.png", "001.png"]
        assert folder.stat().st_mode & 0o755 == 0o755


def test_write_object_refuses_an_existing_folder(tmp_path):
    from monorecon.data.synth import write_object

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "taken", tmp_path / "empty"):
        with pytest.raises(ValueError, match="already exists"):
            write_object(make_object("donut", 0), folder, n_views=1, size=8, seed=0)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["empty", "taken", "taken/notes.txt"]  # nothing replaced, nothing left behind


def test_a_failed_object_leaves_nothing_behind(tmp_path, monkeypatch):
    """A crash while an object is written leaves neither a partial object nor its temporary folder."""
    import monorecon.data.synth as synth

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synth, "save_mesh", disk_full)
    with pytest.raises(OSError, match="disk full"):
        synthesize_dataset(tmp_path / "d", 1, 1, 8, seed=0, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_progress_bar_counts_objects_and_is_off_when_asked(tmp_path, capsys):
    synthesize_dataset(tmp_path / "quiet", 2, 1, 8, seed=0, progress=False)
    assert capsys.readouterr().err == ""
    synthesize_dataset(tmp_path / "shown", 2, 1, 8, seed=0, progress=True)
    err = capsys.readouterr().err
    assert "synthesising objects" in err and "2/2" in err


def _index_entries_without_rendering(root: Path, monkeypatch, **kwargs) -> list[dict]:
    """synthesize_dataset's index entries, with every object's building and writing skipped."""
    import monorecon.data.synth as synth
    from monorecon.core.mesh import Mesh

    box = trimesh.creation.box((1.0, 1.0, 1.0))
    cube = Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces))
    monkeypatch.setattr(synth, "make_object", lambda class_name, seed: cube)
    monkeypatch.setattr(synth, "write_object", lambda mesh, folder, **kw: None)
    synthesize_dataset(root, **kwargs, progress=False)
    return json.loads((root / "index.json").read_text())["objects"]


def test_master_seeds_give_unrelated_objects(tmp_path, monkeypatch):
    """Object i draws from default_rng([seed, i]): the objects of seed 1 are not those of seed 0 shifted by one."""
    zero, one = (
        _index_entries_without_rendering(tmp_path / str(seed), monkeypatch, n_objects=30, n_views=1, size=8, seed=seed)
        for seed in (0, 1)
    )
    assert not {entry["seed"] for entry in zero} & {entry["seed"] for entry in one}
    assert len({entry["seed"] for entry in zero}) == 30


def test_default_splits_and_stretch_factors_follow_their_distributions(tmp_path, monkeypatch):
    """Splits 0.8 / 0.1 / 0.1 by default; stretch factors log-uniform in [1/S, S] (their logs uniform): checked on
    1,000 objects whose building and rendering are skipped."""
    from scipy.stats import kstest

    import monorecon.data.synth as synth
    from monorecon.core.mesh import Mesh

    box = trimesh.creation.box((1.0, 1.0, 1.0))
    cube = Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces))
    metas = []
    monkeypatch.setattr(synth, "make_object", lambda class_name, seed: cube)
    monkeypatch.setattr(synth, "write_object", lambda mesh, folder, **kwargs: metas.append(kwargs["meta"]))
    synthesize_dataset(tmp_path / "d", 1000, 1, 8, seed=0, progress=False, stretch=4.0)
    counts = {split: sum(m["split"] == split for m in metas) for split in ("train", "val", "test")}
    assert 750 <= counts["train"] <= 850 and 65 <= counts["val"] <= 135 and 65 <= counts["test"] <= 135
    logs = np.log(np.array([m["stretch_xz"] for m in metas])).reshape(-1) / math.log(4.0)
    assert -1.0 <= logs.min() and logs.max() <= 1.0
    assert kstest(logs, "uniform", args=(-1.0, 2.0)).pvalue > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Shapes: documented placements, colours and patterns
# --------------------------------------------------------------------------------------------------------------------
def test_mug_handle_is_on_its_right_and_critter_heads_face_front():
    for seed in range(4):
        # The bounding box is centred, so a handle at +X puts the body's axis (its flat bottom's centre) at -X.
        mug = make_object("mug", seed).verts.numpy()
        assert mug[mug[:, 1] < mug[:, 1].min() + 1e-4][:, 0].mean() < -0.02
        # A critter's head (with its ears) is its highest part, towards +Z.
        critter = make_object("critter", seed).verts.numpy()
        assert critter[critter[:, 1].argmax(), 2] > 0.0


def test_house_door_is_at_the_front_and_donut_icing_on_top():
    for seed in range(3):
        house = make_object("house", seed)
        verts = house.verts.numpy()
        door = np.all(np.isclose(house.vertex_colors.numpy(), [0.35, 0.2, 0.1], atol=1e-3), axis=1)
        assert door.any() and verts[door, 2].min() > 0.1 and verts[door, 1].min() == pytest.approx(verts[:, 1].min())
        donut = make_object("donut", seed)
        y, colors = donut.verts.numpy()[:, 1], donut.vertex_colors.numpy()
        dough = np.all(np.isclose(colors / colors[:, :1], [1.0, 0.6 / 0.8, 0.35 / 0.8], atol=1e-4), axis=1)
        assert dough[y < y.min() + 0.02].all() and not dough[y > y.max() - 0.02].any()


def test_bottle_label_is_around_the_middle_of_its_body():
    for seed in range(3):
        bottle = make_object("bottle", seed)
        y, colors = bottle.verts.numpy()[:, 1], bottle.vertex_colors.numpy()
        height = (y - y.min()) / np.ptp(y)
        glass = colors[np.argmin(y)]
        # Not glass and below the cap: the label, from 0.3 to 0.7 of the body's height (the body is 47-80 % of the
        # bottle's height without its cap).
        label = (np.abs(colors - glass).max(1) > 1e-3) & (height < 0.85)
        assert label.any() and 0.1 < height[label].min() and height[label].max() < 0.6


def test_random_and_contrast_colours_keep_their_ranges():
    """Default colours have saturation in [0.35, 0.9] and value in [0.45, 0.95]; a contrast colour's hue is at least
    90 degrees away."""
    import colorsys

    from monorecon.data.shapes import _contrast_color, _random_color

    rng = np.random.default_rng(0)
    for _ in range(200):
        color = _random_color(rng)
        hue, saturation, value = colorsys.rgb_to_hsv(*color)
        assert 0.35 - 1e-9 <= saturation <= 0.9 + 1e-9 and 0.45 - 1e-9 <= value <= 0.95 + 1e-9
        distance = abs(colorsys.rgb_to_hsv(*_contrast_color(color, rng))[0] - hue)
        assert min(distance, 1.0 - distance) >= 0.25 - 1e-9


def test_patterns_are_solid_stripes_or_checks():
    """Painted on a cylinder: solid, horizontal stripes 0.08-0.2 high, 8-16 vertical stripes around Y, or their
    checks; all four kinds occur."""
    from monorecon.data.shapes import _pattern

    base = np.array([0.8, 0.2, 0.2])
    heights = np.linspace(0.0013, 0.9987, 400)
    angles = np.linspace(-math.pi, math.pi, 721)[:-1] + 0.0021
    y, a = np.meshgrid(heights, angles, indexing="ij")
    points = np.stack([0.3 * np.sin(a), y, 0.3 * np.cos(a)], -1).reshape(-1, 3)
    kinds = set()
    for seed in range(40):
        accent = (_pattern(np.random.default_rng(seed), base)(points) != base).any(-1).reshape(y.shape)
        rows, columns = accent[:, 0], accent[0]
        assert np.array_equal(accent, rows[:, None] ^ columns[None] ^ accent[0, 0])  # a product of bands and sectors
        bands, sectors = np.count_nonzero(np.diff(rows)), np.count_nonzero(columns != np.roll(columns, 1))
        if bands:
            assert 1 / 0.2 - 1 <= bands <= 1 / 0.08 + 1
        if sectors:
            assert 8 <= sectors <= 16 and sectors % 2 == 0
            runs = np.diff(np.flatnonzero(columns != np.roll(columns, 1)), append=len(columns) + np.argmax(
                columns != np.roll(columns, 1)))  # fmt: skip
            assert runs.max() - runs.min() <= 2  # equal stripes all around, none doubled at the seam
        kinds.add({(False, False): "solid", (True, False): "hstripes", (False, True): "vstripes"}.get(
            (bands > 0, sectors > 0), "checks"))  # fmt: skip
    assert kinds == {"solid", "hstripes", "vstripes", "checks"}


def test_organic_objects_are_plain_grey_in_40_percent_of_cases():
    from monorecon.data.shapes import _organic_paint

    grey = 0
    for seed in range(1000):
        paint = _organic_paint(np.random.default_rng(seed))
        grey += isinstance(paint, np.ndarray) and bool(np.ptp(paint) == 0)
    assert 0.35 <= grey / 1000 <= 0.45


def test_sharp_edges_and_only_they_have_split_vertices():
    """Man-made classes: two faces meeting at an edge share its vertices exactly when their dihedral angle is at most
    40 deg (smooth shading rounds such an edge; a sharper one stays hard)."""
    sharp = 0
    for name in CLASSIC_CLASSES:
        mesh = make_object(name, 0)
        faces = mesh.faces.numpy()
        welded = trimesh.Trimesh(*_merged(mesh.verts.double().numpy(), faces), process=False)
        angles = np.degrees(welded.face_adjacency_angles)
        shared = np.array([len(set(faces[a]) & set(faces[b])) for a, b in welded.face_adjacency])
        assert (shared[angles > 40.5] < 2).all() and (shared[angles < 39.5] == 2).all(), name
        sharp += int((angles > 40.5).sum())
    assert sharp > 100
