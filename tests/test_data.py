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
    default_as_list = ViewSampling.at_distance(1.9, elevation_range_deg=[-10, 40])
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
    """A textured file (written by trimesh) keeps its UVs and image, and gets no grey in their place."""
    rng = np.random.default_rng(0)
    box = trimesh.creation.box((1.0, 2.0, 3.0))
    uvs = rng.random((len(box.vertices), 2))
    pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # not square: an H / W swap shows
    box.visual = trimesh.visual.TextureVisuals(uv=uvs, image=Image.fromarray(pixels))
    box.export(tmp_path / f"box.{ext}")
    mesh = load_normalized_mesh(tmp_path / f"box.{ext}")
    assert mesh.vertex_colors is None
    np.testing.assert_allclose(mesh.uvs.numpy(), uvs, atol=1e-6)
    np.testing.assert_array_equal(np.round(mesh.texture.numpy() * 255), pixels)


# --------------------------------------------------------------------------------------------------------------------
# Synthesis and reading back
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    return synthesize_dataset(root, n_objects=2, n_views=2, size=32, seed=3, progress=False)


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
    distance = camera_distance(40.0)
    np.testing.assert_allclose(c2w[:, :3, 3].norm(dim=-1).numpy(), distance, rtol=1e-5)
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
            synthesize_dataset(again, **{"n_objects": 1, "n_views": 2, "size": 32, "seed": 3, **change}, progress=False)
    other = synthesize_dataset(tmp_path / "other", n_objects=1, n_views=2, size=32, seed=4, progress=False)
    assert (other / "000000_mug" / "cameras.json").read_bytes() != (again / "000000_mug" / "cameras.json").read_bytes()


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
    assert f"missing or empty file {missing}" in messages and f"corrupt image {truncated}" in messages
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
        (lambda obj: _negative_depth(obj / "depth" / "000.npz"), "depth file {obj}/depth/000.npz must hold a finite"),
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
