"""Baselines against analytic silhouettes, and the evaluation harness end to end on tiny data."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.checks import SkippedInputWarning
from monorecon.core.mesh import Mesh
from monorecon.data import ViewSampling, synthesize_dataset
from monorecon.data.synth import render_views
from monorecon.eval.baselines import inflation_baseline, sphere_baseline
from monorecon.eval.harness import EvalCase, _mesh_mask_iou, evaluate, load_cases
from monorecon.eval.metrics import depth_ratio, mask_iou
from monorecon.io.mesh_io import load_mesh
from monorecon.models.triposr import TripoSRConfig, TripoSRModel
from monorecon.models.triposr.model import input_camera

FILL_AT_1_9 = math.tan(math.asin(0.5 / 1.9)) / math.tan(math.radians(20.0))


def _analytic_sphere_mask(size: int, centre: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels whose ray (canonical camera) hits the sphere, by the ray-sphere discriminant."""
    origins, directions = input_camera(size).get_rays()
    oc = origins[0] - centre
    b = (oc * directions[0]).sum(-1)
    c = (oc * oc).sum(-1) - radius**2
    return (b * b - c > 0).float()


def test_sphere_baseline_recovers_a_sphere():
    centre, radius = torch.tensor([0.1, -0.05, 0.0]), 0.4
    mesh = sphere_baseline(_analytic_sphere_mask(256, centre, radius))
    mean_centre = mesh.verts.mean(0)
    torch.testing.assert_close(mean_centre, centre, atol=0.01, rtol=0)
    # Icosphere vertices lie on the fitted radius; pixelisation of the disc area costs well under 1 %.
    assert (mesh.verts - mean_centre).norm(dim=-1).mean().item() == pytest.approx(radius, rel=0.01)


def test_baselines_centre_a_coarse_silhouette_on_the_view_axis():
    """A centred disc of 24 pixels: both baselines' shapes are centred on the view axis (pixel centres lie half a
    pixel inside the pixels: 0.027 world units here)."""
    mask = _analytic_sphere_mask(24, torch.zeros(3), 0.4)
    sphere = sphere_baseline(mask).verts
    torch.testing.assert_close(sphere.mean(0)[:2], torch.zeros(2), atol=2e-3, rtol=0)
    inflated = inflation_baseline(mask, resolution=64).verts
    box_centre = (inflated.max(0).values + inflated.min(0).values) / 2
    torch.testing.assert_close(box_centre[:2], torch.zeros(2), atol=0.02, rtol=0)


def test_inflation_of_a_disc_is_a_round_solid():
    radius = 0.4
    mask = _analytic_sphere_mask(128, torch.zeros(3), radius)
    mesh = inflation_baseline(mask, resolution=64)
    verts = mesh.verts
    # The silhouette is the disc: lateral extent ~ the sphere's projected radius at the origin's depth.
    camera = input_camera(128)
    screen = camera.transform_points_screen(verts)[0]
    inside = mask[screen[:, 1].long().clamp(0, 127), screen[:, 0].long().clamp(0, 127)]
    assert inside.mean().item() > 0.97
    # Thickness at the centre = distance transform (the disc radius in pixels) converted to world units ~ radius.
    near_axis = verts[(verts[:, 0].abs() < 0.05) & (verts[:, 1].abs() < 0.05)]
    assert near_axis[:, 2].max().item() == pytest.approx(radius, abs=0.05)
    assert near_axis[:, 2].min().item() == pytest.approx(-radius, abs=0.05)


def test_round_inflation_of_a_disc_is_the_sphere():
    """The round profile sqrt(dt (2R - dt)) is the sphere's own half-thickness over its disc, so the vertices lie near
    the sphere's radius from its centre (up to perspective: the disc is measured at the origin's depth); the cone
    profile's double cone does not."""
    radius = 0.4
    mask = _analytic_sphere_mask(128, torch.zeros(3), radius)
    error = {}
    for profile in ("round", "cone"):
        verts = inflation_baseline(mask, resolution=96, profile=profile).verts
        error[profile] = float((verts.norm(dim=-1) - radius).abs().mean())
    assert error["round"] < 0.03 and error["cone"] > 0.06
    with pytest.raises(ValueError, match="profile"):
        inflation_baseline(mask, profile="square")


def test_mesh_mask_iou_against_analytic_sphere_silhouettes():
    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    target = _analytic_sphere_mask(128, torch.zeros(3), 0.4).numpy()
    for shift in (0.0, 0.15, 0.3):
        verts = torch.tensor(ball.vertices, dtype=torch.float32) + torch.tensor([shift, 0.0, 0.0])
        mesh = Mesh(verts, torch.tensor(ball.faces))
        reference = mask_iou(_analytic_sphere_mask(64, torch.tensor([shift, 0.0, 0.0]), 0.4),
                             _analytic_sphere_mask(64, torch.zeros(3), 0.4))  # fmt: skip
        assert _mesh_mask_iou(mesh, target, 64) == pytest.approx(reference, abs=0.03)
    assert reference < 0.6


def test_depth_ratio_of_ellipsoids():
    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=3)
    sphere = Mesh(torch.tensor(ball.vertices, dtype=torch.float32), torch.tensor(ball.faces))

    def ellipsoid(radii, scale=1.0):
        return Mesh(sphere.verts * torch.tensor(radii) * scale, sphere.faces)

    # Relative depth = z extent / largest of the x and y extents; the ratio is pred's over gt's, whatever the scale.
    assert depth_ratio(ellipsoid((0.5, 0.4, 0.6)), sphere) == pytest.approx(0.6 / 0.5, rel=1e-6)
    assert depth_ratio(ellipsoid((0.3, 0.5, 0.25), 7.0), ellipsoid((1.0, 1.0, 1.0))) == pytest.approx(0.5, rel=1e-6)
    assert depth_ratio(sphere, ellipsoid((0.5, 1.0, 1.0)), view_axis=0) == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="view_axis"):
        depth_ratio(sphere, sphere, view_axis=3)
    with pytest.raises(ValueError, match="across the view axis"):
        depth_ratio(ellipsoid((0.0, 0.0, 1.0)), sphere)


def test_harness_depth_ratio_of_inflation_on_a_sphere_is_one(tmp_path):
    import trimesh

    (tmp_path / "meshes").mkdir()
    trimesh.creation.icosphere(subdivisions=4).export(tmp_path / "meshes" / "ball.ply")
    summary = evaluate("inflation", tmp_path / "meshes", tmp_path / "report", n_points=2000, progress=False)
    # A disc silhouette inflates to a sphere (see the inflation test): as deep as it is wide.
    assert summary["mean"]["depth_ratio"] == pytest.approx(1.0, abs=0.08)
    assert summary["mean"]["volume_iou"] == pytest.approx(0.5, abs=0.06)  # a double cone in its sphere: 1/2
    rows = list(csv.DictReader((tmp_path / "report" / "per_object.csv").open()))
    assert float(rows[0]["depth_ratio"]) == pytest.approx(summary["mean"]["depth_ratio"])
    # The baseline's one constant scales its depth: half-thickness 1.5 x the distance transform, 1.5 x as deep.
    thicker = evaluate("inflation", tmp_path / "meshes", tmp_path / "thick", n_points=2000, progress=False,
                       inflation_thickness=1.5)  # fmt: skip
    assert thicker["method"] == "inflation (1.5)" and summary["method"] == "inflation"
    assert thicker["mean"]["depth_ratio"] == pytest.approx(1.5, abs=0.12)
    rounder = evaluate("inflation", tmp_path / "meshes", tmp_path / "round", n_points=2000, progress=False,
                       inflation_thickness=0.8, inflation_profile="round")  # fmt: skip
    assert rounder["method"] == "inflation (round 0.8)"
    assert rounder["mean"]["depth_ratio"] == pytest.approx(0.8, abs=0.1)
    # An ellipsoid inside the sphere it flattens: the volume IoU is its depth ratio.
    assert rounder["mean"]["volume_iou"] == pytest.approx(rounder["mean"]["depth_ratio"], abs=0.03)
    sphere = evaluate("sphere", tmp_path / "meshes", tmp_path / "sphere", n_points=2000, progress=False)
    assert sphere["mean"]["volume_iou"] > 0.97
    assert rounder["mean"]["fscore@0.1"] > summary["mean"]["fscore@0.1"]  # nearer the sphere than the double cone
    with pytest.raises(ValueError, match="inflation_profile"):
        evaluate("inflation", tmp_path / "meshes", tmp_path / "bad", progress=False, inflation_profile="square")
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="inflation_thickness"):
            evaluate("inflation", tmp_path / "meshes", tmp_path / "bad", progress=False, inflation_thickness=bad)


def test_baselines_reject_empty_silhouettes():
    with pytest.raises(ValueError, match="silhouette is empty"):
        sphere_baseline(torch.zeros(32, 32))
    with pytest.raises(ValueError, match="silhouette is empty"):
        inflation_baseline(np.zeros((32, 32)))
    disc = _analytic_sphere_mask(32, torch.zeros(3), 0.4)
    for thickness in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="thickness_scale"):
            inflation_baseline(disc, thickness_scale=thickness)


@pytest.fixture(scope="module")
def eval_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval") / "synth"
    sampling = ViewSampling(fov_y_deg=40.0, fill=FILL_AT_1_9)
    synthesize_dataset(root, 2, 2, 48, seed=11, progress=False, sampling=sampling)
    return root


def test_cases_put_the_ground_truth_in_the_canonical_frame(eval_dataset):
    cases = load_cases(eval_dataset)
    assert len(cases) == 2
    light = {"direction": [0.0, 0.0, 1.0], "ambient_color": [1.0] * 3, "diffuse_color": [0.0] * 3,
             "specular_color": [0.0] * 3}  # fmt: skip
    view = {"c2w": orbit_c2w(0.0, 0.0, 1.9)[0].tolist(), "fov_y_deg": 40.0}
    for case in cases:
        # The moved ground truth seen by the canonical camera has exactly the input silhouette ...
        alpha = torch.from_numpy(case.rgba[..., 3])
        silhouette = torch.from_numpy(render_views(case.gt_mesh, [view], 48, light)["rgba"][0, ..., 3])
        assert mask_iou(silhouette, alpha) > 0.99
        # ... which the unmoved one (object frame) does not.
        original = load_mesh(eval_dataset / case.object_id / "mesh.ply")
        unmoved = torch.from_numpy(render_views(original, [view], 48, light)["rgba"][0, ..., 3])
        assert mask_iou(unmoved, alpha) < 0.95


def test_cases_whose_input_camera_is_not_at_the_models_distance_are_skipped(eval_dataset, tmp_path):
    """The model sees its input from 1.9 units: an input view from elsewhere would score another task. Skipped,
    named; the input camera moved along its own axis is otherwise still a valid camera."""

    root = Path(shutil.copytree(eval_dataset, tmp_path / "copy"))
    object_id = sorted(p.name for p in root.iterdir() if p.is_dir())[0]
    cameras_path = root / object_id / "cameras.json"
    cameras = json.loads(cameras_path.read_text())
    c2w = np.asarray(cameras["views"][0]["c2w"])
    c2w[:3, 3] *= 2.5 / np.linalg.norm(c2w[:3, 3])
    cameras["views"][0]["c2w"] = c2w.tolist()
    cameras_path.write_text(json.dumps(cameras))
    message = f"skipping object {object_id}: input camera at distance 2.5, not 1.9"
    with pytest.warns(SkippedInputWarning, match=message):
        cases = load_cases(root)
    assert object_id not in [c.object_id for c in cases] and len(cases) == 1

    # With no object left, evaluate's error refers to the warnings above it: they are shown, not swallowed.
    other = sorted(p.name for p in root.iterdir() if p.is_dir())[1]
    (root / other / "cameras.json").write_text(json.dumps(cameras))
    with pytest.warns(SkippedInputWarning) as shown, pytest.raises(ValueError, match="the warnings above name"):
        evaluate("sphere", root, tmp_path / "report", n_points=500, progress=False)
    assert [str(w.message).split(":")[0] for w in shown] == [f"skipping object {object_id}", f"skipping object {other}"]


def test_evaluate_baselines_writes_the_report(eval_dataset, tmp_path):
    summary = evaluate("sphere", eval_dataset, tmp_path / "sphere", n_points=2000, progress=False, n_grid_cases=1)
    assert summary["n_objects"] == 2 and summary["n_failed"] == 0
    assert 0.0 < summary["mean"]["fscore@0.5"] <= 1.0
    assert summary["mean"]["fscore@0.1"] <= summary["mean"]["fscore@0.2"] <= summary["mean"]["fscore@0.5"]
    for name in ("per_object.csv", "summary.md", "summary.json", "best_worst.png"):
        assert (tmp_path / "sphere" / name).is_file()
    with open(tmp_path / "sphere" / "per_object.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"chamfer", "fscore@0.1", "volume_iou", "seconds"} <= set(rows[0])
    written = json.loads((tmp_path / "sphere" / "summary.json").read_text())
    assert written["method"] == "sphere"
    # The summary's means are those of the CSV's rows: per class (the two objects are of two classes) and overall.
    assert len({row["class"] for row in rows}) == 2
    for row in rows:
        assert written["per_class"][row["class"]]["n"] == 1
        assert written["per_class"][row["class"]]["chamfer"] == pytest.approx(float(row["chamfer"]), rel=1e-5)
    assert written["mean"]["chamfer"] == pytest.approx(np.mean([float(row["chamfer"]) for row in rows]), rel=1e-5)
    inflation = evaluate("inflation", eval_dataset, tmp_path / "infl", n_points=2000, progress=False, n_grid_cases=0)
    assert inflation["n_failed"] == 0
    # Inflation is built from the input silhouette (48 px, thin parts lost at its 96^3 grid); a sphere only roughly.
    assert inflation["mean"]["mesh_mask_iou"] > summary["mean"]["mesh_mask_iou"] + 0.1


def test_report_means_depth_ratios_geometrically_and_shows_the_best_case_first(eval_dataset, tmp_path):
    """A method twice too deep on one object and half as deep on the other has a mean depth ratio of 1 (the
    arithmetic mean, 1.25, would call it too deep); the Markdown table gives each class's and the **all** row's
    means in their columns; the grid's first row is the case with the higher F-score, the second the other."""
    cases = load_cases(eval_dataset)
    stretched = iter(
        Mesh(c.gt_mesh.verts * torch.tensor([1.0, 1.0, factor]), c.gt_mesh.faces)  # +Z: towards the input camera
        for c, factor in zip(cases, (2.0, 0.5), strict=True)
    )

    def deepened(rgba):
        return next(stretched)

    summary = evaluate(deepened, eval_dataset, tmp_path / "r", n_points=500, progress=False, n_grid_cases=1,
                       volume_iou_resolution=0)  # fmt: skip
    rows = _rows(tmp_path / "r")
    assert [float(r["depth_ratio"]) for r in rows] == pytest.approx([2.0, 0.5], rel=1e-4)
    assert summary["mean"]["depth_ratio"] == pytest.approx(1.0, rel=1e-4)
    assert [summary["per_class"][r["class"]]["depth_ratio"] for r in rows] == pytest.approx([2.0, 0.5], rel=1e-4)

    table = [line for line in (tmp_path / "r" / "summary.md").read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in table[2:]}
    assert set(cells) == {rows[0]["class"], rows[1]["class"], "**all**"}
    for name, want in ((rows[0]["class"], "2.0000"), (rows[1]["class"], "0.5000"), ("**all**", "**1.0000**")):
        assert cells[name][header.index("depth_ratio")] == want
    assert cells["**all**"][header.index("n")] == "2"
    fscores = [float(r["fscore@0.1"]) for r in rows]
    assert cells["**all**"][header.index("fscore@0.1")] == f"**{np.mean(fscores):.4f}**"

    grid = np.asarray(Image.open(tmp_path / "r" / "best_worst.png").convert("RGB"), dtype=np.float32) / 255
    assert grid.shape == (2 * (128 + 14), 4 * 128, 3)
    inputs = []
    for case in cases:
        over_white = case.rgba[..., :3] * case.rgba[..., 3:] + 1 - case.rgba[..., 3:]
        inputs.append(np.asarray(Image.fromarray((over_white * 255).astype(np.uint8)).resize((128, 128))) / 255)
    best = int(np.argmax(fscores))
    for row, index in enumerate((best, 1 - best)):
        tile = grid[row * 142 + 14 : (row + 1) * 142, :128]
        distances = [np.abs(tile - image).mean() for image in inputs]
        assert int(np.argmin(distances)) == index, distances


def test_volume_iou_is_only_scored_against_closed_ground_truths(tmp_path, capsys):
    import trimesh

    from monorecon.cli import main

    (tmp_path / "meshes").mkdir()
    ball = trimesh.creation.icosphere(subdivisions=3)
    ball.export(tmp_path / "meshes" / "ball.ply")
    bowl = trimesh.Trimesh(ball.vertices, ball.faces[ball.vertices[ball.faces].min(axis=1)[:, 1] < 0.5])
    bowl.export(tmp_path / "meshes" / "bowl.ply")  # the cap above y = 0.5 cut off: open, it bounds no solid
    summary = evaluate("sphere", tmp_path / "meshes", tmp_path / "r", n_points=1000, progress=False, n_grid_cases=0)
    rows = {r["object_id"].split("@")[0]: r for r in csv.DictReader((tmp_path / "r" / "per_object.csv").open())}
    assert rows["bowl"]["volume_iou"] == "nan" and float(rows["ball"]["volume_iou"]) > 0.9
    assert summary["mean"]["volume_iou"] == pytest.approx(float(rows["ball"]["volume_iou"]), abs=1e-5)
    assert summary["n_scored"]["volume_iou"] == 1 and summary["n_scored"]["fscore@0.1"] == 2
    assert "volume_iou 1 of 2" in (tmp_path / "r" / "summary.md").read_text()
    strict = json.loads((tmp_path / "r" / "summary.json").read_text(), parse_constant=pytest.fail)
    assert strict["n_scored"]["volume_iou"] == 1
    assert main(["eval", "--model", "sphere", "--data", str(tmp_path / "meshes"), "-o", str(tmp_path / "c"),
                 "--points", "1000", "--volume-iou", "16"]) == 0  # fmt: skip
    assert re.search(r"volume_iou [01]\.\d{4} \(1 of 2\)", capsys.readouterr().out)
    # monorecon metrics says so too, and writes null, not NaN, in its JSON.
    args = ["metrics", str(tmp_path / "meshes" / "ball.ply"), str(tmp_path / "meshes" / "bowl.ply"), "--points", "500"]
    assert main([*args, "--volume-iou", "16", "--json", str(tmp_path / "m.json")]) == 0
    assert "volume_iou n/a (the reference is not closed)" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail)["volume_iou"] is None
    (tmp_path / "meshes" / "ball.ply").unlink()
    assert main(["eval", "--model", "sphere", "--data", str(tmp_path / "meshes"), "-o", str(tmp_path / "d"),
                 "--points", "1000", "--volume-iou", "16"]) == 0  # fmt: skip
    assert "volume_iou n/a" in capsys.readouterr().out


def test_unreadable_objects_are_named_skipped_and_counted(eval_dataset, tmp_path, capsys):

    import trimesh

    from monorecon.cli import main

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(subdivisions=2).export(meshes / "ball.glb")
    (meshes / "cut.glb").write_bytes((meshes / "ball.glb").read_bytes()[:300])  # truncated
    (meshes / "points.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                                       "property float z\nend_header\n0 0 0\n")  # fmt: skip
    code = main(["eval", "--model", "sphere", "--data", str(meshes), "-o", str(tmp_path / "r"), "--points", "500",
                 "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 3, err
    assert "skipping mesh" in err[0] and "cut.glb" in err[0] and "points.ply" in err[1]
    assert err[2] == "monorecon: 2 objects skipped (the warnings above say why)"
    assert [row["object_id"] for row in _rows(tmp_path / "r")] == ["ball"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["n_objects"], summary["n_skipped"]) == (1, 2)
    markdown = (tmp_path / "r" / "summary.md").read_text()
    assert "2 objects of the data were left out (the run's warnings say why)" in markdown

    # A synthetic dataset: an object with a corrupt view is left out the same way.
    data = tmp_path / "synth"
    shutil.copytree(eval_dataset, data)
    (next(data.glob("*/rgba/000.png"))).write_text("not a png")
    with pytest.warns(SkippedInputWarning, match="skipping object"):
        summary = evaluate("sphere", data, tmp_path / "s", n_points=500, progress=False, n_grid_cases=0)
    assert (summary["n_objects"], summary["n_skipped"]) == (1, 1)


def _tiny_model_config() -> TripoSRConfig:
    return TripoSRConfig.from_dict(
        {
            "cond_image_size": 32,
            "image_encoder": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                              "patch_size": 16, "pretrained_image_size": 32},
            "tokenizer": {"plane_size": 4, "num_channels": 32},
            "backbone": {"in_channels": 32, "num_heads": 2, "head_dim": 16, "num_layers": 1,
                         "cross_attention_dim": 32, "norm_num_groups": 8},
            "post_processor": {"in_channels": 32, "out_channels": 8},
            "decoder": {"in_channels": 24, "hidden_channels": 16, "n_hidden_layers": 1},
        }
    )  # fmt: skip


def test_evaluate_model_counts_empty_reconstructions_as_failures(eval_dataset, tmp_path):
    torch.manual_seed(0)
    model = TripoSRModel(_tiny_model_config())
    summary = evaluate(
        model, eval_dataset, tmp_path / "m", n_points=500, mc_resolution=16, render_size=16, progress=False,
        threshold=1e9, n_grid_cases=1,
    )  # fmt: skip
    assert summary["n_failed"] == 2 and summary["mean"]["fscore@0.1"] == summary["mean"]["volume_iou"] == 0.0
    assert 0.0 <= summary["mean"]["mask_iou"] <= 1.0 and {"psnr", "ssim"} <= set(summary["mean"])


class _RecordingModel(TripoSRModel):
    """The tiny model, recording what the harness gives it; its volume render is a blank (white, empty) image and
    its surface ``surface`` where set."""

    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__(config)
        self.inputs, self.carves, self.surface = [], [], None

    def encode(self, images):
        self.inputs.append(images.clone())
        return super().encode(images)

    def render(self, scene_code, cameras, n_samples=None, chunk_size=8192, carve=None):
        self.carves.append(carve)
        size = cameras.height
        return {"rgb": torch.ones(1, size, size, 3), "opacity": torch.zeros(1, size, size, 1)}

    def extract_mesh(self, scene_code, *args, **kwargs):
        return self.surface if self.surface is not None else super().extract_mesh(scene_code, *args, **kwargs)


def test_harness_feeds_the_model_as_trained_and_scores_its_render_over_white(eval_dataset, tmp_path):
    """The input is composited on grey 0.5 (the training renders' background); the input-view render (white
    background, as the volume renderer draws) is scored against the input over white: a blank render has the
    closed-form PSNR of the object's pixels against white. Carving and filling reach the render as asked."""
    from monorecon.core.carving import SilhouetteFill, SilhouetteHull

    torch.manual_seed(0)
    model = _RecordingModel(_tiny_model_config())
    common = {"n_points": 300, "mc_resolution": 12, "render_size": 48, "progress": False, "n_grid_cases": 0}
    rows = {}
    for name, options in {"plain": {"carve": False}, "hull": {"fill": False}, "filled": {"fill": True}}.items():
        evaluate(model, eval_dataset, tmp_path / name, max_objects=1, volume_iou_resolution=0, **common, **options)
        rows[name] = _rows(tmp_path / name)[0]
    assert [type(c) for c in model.carves] == [type(None), SilhouetteHull, SilhouetteFill]

    (case,) = load_cases(eval_dataset, max_objects=1)
    rgba = torch.from_numpy(case.rgba).double()
    alpha = rgba[..., 3:]
    assert 0 < float(alpha.mean()) < 1
    for seen in model.inputs:
        np.testing.assert_allclose(seen[0].double(), rgba[..., :3] * alpha + 0.5 * (1 - alpha), atol=1e-6)
    mse_against_white = float(((rgba[..., :3] * alpha + (1 - alpha) - 1.0) ** 2).mean())
    for row in rows.values():
        assert float(row["psnr"]) == pytest.approx(-10 * math.log10(mse_against_white), abs=1e-3)
        assert float(row["mask_iou"]) == 0.0

    # The true surface in grey: the input's colours, projected onto it, make its input-view render the input.
    model.surface = Mesh(case.gt_mesh.verts, case.gt_mesh.faces, vertex_colors=torch.full_like(case.gt_mesh.verts, 0.5))
    for name, project in {"projected": True, "grey": False}.items():
        evaluate(model, eval_dataset, tmp_path / name, max_objects=1, volume_iou_resolution=0, **common,
                 project_input=project)  # fmt: skip
        rows[name] = _rows(tmp_path / name)[0]
    assert float(rows["projected"]["mesh_psnr"]) > float(rows["grey"]["mesh_psnr"]) + 5, rows


def test_mesh_folder_cases_one_per_azimuth_in_the_canonical_frame(tmp_path):
    import trimesh

    (tmp_path / "meshes").mkdir()
    trimesh.creation.box((0.2, 0.4, 0.8)).export(tmp_path / "meshes" / "slab.ply")
    cases = load_cases(tmp_path / "meshes", mesh_azimuths=(0.0, 90.0), mesh_elevation=0.0, image_size=48)
    assert [c.object_id for c in cases] == ["slab@0", "slab@90"]
    light = {"direction": [0.0, 0.0, 1.0], "ambient_color": [1.0] * 3, "diffuse_color": [0.0] * 3,
             "specular_color": [0.0] * 3}  # fmt: skip
    view = {"c2w": orbit_c2w(0.0, 0.0, 1.9)[0].tolist(), "fov_y_deg": 40.0}
    depths = []
    for case in cases:
        silhouette = torch.from_numpy(render_views(case.gt_mesh, [view], 48, light)["rgba"][0, ..., 3])
        assert mask_iou(silhouette, torch.from_numpy(case.rgba[..., 3])) > 0.99
        depths.append(float(np.ptp(case.gt_mesh.verts[:, 2].numpy())))  # extent along the canonical view axis
    # A quarter turn between the views swaps the slab's 0.8 and 0.2 sides along the view (normalised: radius 0.5).
    scale = 0.5 / math.sqrt(0.1**2 + 0.2**2 + 0.4**2)
    assert sorted(depths) == pytest.approx([0.2 * scale, 0.8 * scale], abs=1e-4)
    with pytest.raises(ValueError, match="azimuths"):
        load_cases(tmp_path / "meshes", mesh_azimuths=())
    with pytest.raises(ValueError, match="azimuths"):
        load_cases(tmp_path / "meshes", mesh_azimuths=(float("nan"),))
    with pytest.raises(ValueError, match="distinct"):
        load_cases(tmp_path / "meshes", mesh_azimuths=(30.0, 30.0))
    # From 60 deg up, the view axis crosses the slab's 0.4 (Y) and 0.8 (Z) sides: extent 0.4 sin 60 + 0.8 cos 60.
    (raised,) = load_cases(tmp_path / "meshes", mesh_azimuths=(0.0,), mesh_elevation=60.0, image_size=48)
    expected = (0.4 * math.sin(math.radians(60)) + 0.8 * math.cos(math.radians(60))) * scale
    assert float(np.ptp(raised.gt_mesh.verts[:, 2].numpy())) == pytest.approx(expected, abs=1e-4)
    for elevation in (90.0, -90.0, float("nan")):
        with pytest.raises(ValueError, match="elevation"):
            load_cases(tmp_path / "meshes", mesh_elevation=elevation)
    # Each case carries the 7 other views at 45-degree steps, in the canonical frame (also after prepare), untextured.
    from monorecon.core.cameras import PerspectiveCameras
    from monorecon.core.mesh_renderer import render_mesh
    from monorecon.eval.harness import _prepared_case

    for case in cases:
        assert not case.coloured
        for seen in (case, _prepared_case(case, 0.7)):
            c2w, fov, rgba = seen.views
            assert c2w.shape == (7, 4, 4) and rgba.shape == (7, 48, 48, 4)
            cameras = PerspectiveCameras(c2w, 48, 48, fov_y_deg=fov)
            alpha = render_mesh(seen.gt_mesh.verts.float(), seen.gt_mesh.faces, cameras, shading="unlit")["alpha"]
            assert mask_iou(alpha, rgba[..., 3]) > 0.97
    # the slab seen from 0 deg shows its 0.2 x 0.4 face, the views at +90 / +270 deg its 0.8 x 0.4 face, and the
    # view at +180 deg the 0.2 x 0.4 face again
    areas = cases[0].views[2][..., 3].sum(dim=(1, 2))
    front = float(cases[0].rgba[..., 3].sum())
    assert areas[1] > 2.0 * front and areas[5] > 2.0 * front and abs(float(areas[3]) - front) < 0.15 * front


def test_novel_mask_iou_sees_a_flattened_shape():
    """A unit-radius sphere against its own silhouettes scores about 1; squashed to 0.3 along the view axis, its
    silhouette from the side is an ellipse 0.3 as wide: IoU about 0.3 there (analytic, orthographic limit)."""
    import trimesh

    from monorecon.core.cameras import PerspectiveCameras
    from monorecon.core.mesh_renderer import render_mesh
    from monorecon.eval.harness import _novel_mask_iou

    tm = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    sphere = Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces))
    c2w = orbit_c2w(torch.tensor([90.0]), 0.0, 12.0)  # far away: nearly orthographic
    fov = torch.tensor([5.0])
    alpha = render_mesh(sphere.verts, sphere.faces, PerspectiveCameras(c2w, 64, 64, fov_y_deg=5.0), shading="unlit")
    views = (c2w, fov, alpha["alpha"][..., None].expand(-1, -1, -1, 4))
    assert _novel_mask_iou(sphere, views, 64) > 0.97
    flat = Mesh(sphere.verts * torch.tensor([1.0, 1.0, 0.3]), sphere.faces)
    assert _novel_mask_iou(flat, views, 64) == pytest.approx(0.3, abs=0.03)


def test_evaluate_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        evaluate("sphere", tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no mesh files"):
        evaluate("sphere", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="cannot evaluate"):
        evaluate(42, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="volume IoU grid side must lie in"):
        evaluate("sphere", tmp_path / "empty", tmp_path / "out", volume_iou_resolution=4)


def test_evaluate_refuses_a_report_folder_that_is_a_file(eval_dataset, tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match="is a file"):
        evaluate("sphere", eval_dataset, tmp_path / "taken", n_points=500, progress=False)
    assert (tmp_path / "taken").read_text() == "a file"


def test_eval_command_passes_threshold_and_carving(eval_dataset, tmp_path):
    from monorecon import cli

    model = str(Path(__file__).parent / "data" / "triposr_ref")
    common = ["eval", "--model", model, "--data", str(eval_dataset), "--mc-resolution", "16", "--points", "500"]
    assert cli.main([*common, "-o", str(tmp_path / "high"), "--threshold", "1e9", "--quiet"]) == 0
    assert json.loads((tmp_path / "high" / "summary.json").read_text())["n_failed"] == 2  # no surface that high
    assert cli.main([*common, "-o", str(tmp_path / "plain"), "--threshold", "1", "--no-carve", "--quiet"]) == 0
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary["method"] == "model (no carving)" and summary["n_failed"] < 2


def test_other_methods_meshes_are_scored_from_a_predictions_folder(tmp_path, capsys):
    import trimesh

    from monorecon import cli
    from monorecon.core.cameras import look_at
    from monorecon.io.images import load_image
    from monorecon.io.mesh_io import save_mesh

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box((0.2, 0.4, 0.8)).export(meshes / "slab.ply")
    trimesh.creation.icosphere(subdivisions=3).export(meshes / "ball.ply")
    cases_options = ["--data", str(meshes), "--azimuths", "0,90,180", "--elevation", "20", "--quiet"]
    common = [*cases_options, "--points", "2000"]  # scoring's: --export-inputs refuses --points

    # The exported inputs are the harness's own input images (8-bit PNG).
    assert cli.main(["eval", "--export-inputs", *cases_options, "-o", str(tmp_path / "inputs")]) == 0
    cases = {c.object_id: c for c in load_cases(meshes, mesh_azimuths=(0.0, 90.0, 180.0), mesh_elevation=20.0)}
    assert sorted(p.stem for p in (tmp_path / "inputs").iterdir()) == sorted(cases)
    for object_id, case in cases.items():
        assert np.abs(load_image(tmp_path / "inputs" / f"{object_id}.png") - case.rgba).max() <= 0.5 / 255 + 1e-6

    # Predictions: the truth in another frame (rigid motion), the truth in the layout `reconstruct` writes, the
    # wrong shape, and for the ball one missing and one unreadable file.
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    slab = cases["slab@0"].gt_mesh
    rotation = look_at(torch.tensor([[0.3, -0.5, 0.8]]), torch.zeros(1, 3))[0, :3, :3]
    save_mesh(Mesh(slab.verts @ rotation.T + torch.tensor([0.1, 0.2, -0.3]), slab.faces), predictions / "slab@0.ply")
    (predictions / "slab@90").mkdir()
    save_mesh(cases["slab@90"].gt_mesh, predictions / "slab@90" / "mesh.glb")
    save_mesh(cases["ball@0"].gt_mesh, predictions / "slab@180.obj")
    (predictions / "ball@90.glb").write_bytes(b"not a mesh")
    save_mesh(cases["ball@180"].gt_mesh, predictions / "ball@180.ply")
    capsys.readouterr()
    assert cli.main(["eval", "--predictions", str(predictions), *common, "-o", str(tmp_path / "report")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("monorecon: warning:")]
    assert len(warnings) == 2 and "ball@0" in warnings[0] and "ball@90" in warnings[1]
    rows = {r["object_id"]: r for r in csv.DictReader((tmp_path / "report" / "per_object.csv").open())}
    for same in ("slab@0", "slab@90", "ball@180"):  # identical shapes: F = 1 whatever the frame, and a Chamfer
        # distance at the spacing of 2,000 samples, 0.5 sqrt(area / 2000) in the unit box: 0.015 slab, 0.020 ball
        assert float(rows[same]["fscore@0.1"]) > 0.99 and float(rows[same]["chamfer"]) < 0.025, same
    assert float(rows["slab@180"]["fscore@0.1"]) < 0.6  # a sphere for a slab
    assert [rows[b]["failed"] for b in ("ball@0", "ball@90")] == ["1", "1"]
    assert {"mesh_mask_iou", "depth_ratio", "volume_iou"}.isdisjoint(rows["slab@0"])  # they need the canonical frame
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["n_failed"] == 2 and summary["method"] == f"predictions in {predictions}"

    # Bad input: one line, exit 2.
    (tmp_path / "unrelated").mkdir()
    save_mesh(slab, tmp_path / "unrelated" / "chair.glb")
    for folder, message in (("unrelated", "no mesh in"), ("absent", "predictions folder not found")):
        assert cli.main(["eval", "--predictions", str(tmp_path / folder), *common, "-o", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    missing = ["eval", "--export-inputs", "--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "in2"), "--quiet"]
    assert cli.main(missing) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "in2").exists()  # nothing half-written
    with pytest.raises(SystemExit):  # one method at a time
        cli.main(["eval", "--model", "sphere", "--predictions", str(predictions), *common, "-o", str(tmp_path / "r")])


def test_reconstruct_command_scores_as_the_harness_measures_the_bundled_model(tmp_path):
    """The user's path (`reconstruct` of the exported input: recrop to the model's framing, a 512-pixel input, its
    silhouette filled, 256^3 marching cubes) and the harness's (the 128-pixel input as rendered) are the same model:
    their F-scores agree. (A fill computed on the rays of the wrong camera for 512-pixel inputs once cost 0.12 here,
    0.35 on the Stanford bunny.)"""
    import trimesh

    from monorecon import cli

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    torus = trimesh.creation.torus(0.3, 0.12)
    torus.apply_transform(trimesh.transformations.rotation_matrix(0.6, [1.0, 0.0, 0.0]))
    torus.export(meshes / "ring.ply")
    cases_options = ["--data", str(meshes), "--azimuths", "30", "--quiet"]
    common = [*cases_options, "--points", "4000"]  # scoring's: --export-inputs refuses --points
    assert cli.main(["eval", "--model", "default", *common, "-o", str(tmp_path / "harness")]) == 0
    assert cli.main(["eval", "--export-inputs", *cases_options, "-o", str(tmp_path / "inputs")]) == 0
    assert cli.main(["reconstruct", str(tmp_path / "inputs"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert cli.main(["eval", "--predictions", str(tmp_path / "out"), *common, "-o", str(tmp_path / "user")]) == 0
    harness, user = (
        float(next(csv.DictReader((tmp_path / name / "per_object.csv").open()))["fscore@0.1"])
        for name in ("harness", "user")
    )
    assert harness > 0.7 and abs(user - harness) < 0.05, (harness, user)


def test_prepared_cases_are_framed_as_reconstruct_frames_photos(tmp_path):
    import trimesh

    from monorecon.api import load_model
    from monorecon.eval.harness import _prepared_case

    # A flat scene in the plane z = 0 of the canonical frame, off-centre in the input image (the similarity that
    # moves the truth is exact in that plane).
    plate = trimesh.creation.box((0.5, 0.3, 0.02))
    plate.apply_translation((0.2, -0.15, 0.0))
    verts = torch.tensor(plate.vertices, dtype=torch.float32)
    view = {"c2w": orbit_c2w(0.0, 0.0, 1.9)[0].tolist(), "fov_y_deg": 40.0}
    light = {"direction": [0.0, 0.0, 1.0], "ambient_color": [1.0] * 3, "diffuse_color": [0.0] * 3,
             "specular_color": [0.0] * 3}  # fmt: skip
    size = 128
    gt = Mesh(verts, torch.tensor(plate.faces), vertex_colors=torch.full_like(verts, 0.6))
    case = EvalCase("plate", "flat", render_views(gt, [view], size, light)["rgba"][0], gt)
    prepared = _prepared_case(case, 0.7)

    def box_of(alpha: np.ndarray) -> tuple[float, float, float]:  # longer side, centre u, centre v (pixels)
        rows, cols = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
        return (
            max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]),
            (cols[0] + cols[-1] + 1) / 2,
            (rows[0] + rows[-1] + 1) / 2,
        )

    side, u, v = box_of(case.rgba[..., 3] > 0.5)
    assert abs(u - size / 2) > 3 or abs(v - size / 2) > 3  # the render's framing is off-centre
    side, u, v = box_of(prepared.rgba[..., 3] > 0.5)
    assert side == pytest.approx(0.7 * size, abs=1.5) and (u, v) == pytest.approx((size / 2, size / 2), abs=1.0)
    # Independent of the similarity's formula: the moved truth, rendered by the input camera, is the prepared input.
    seen = torch.from_numpy(render_views(prepared.gt_mesh, [view], size, light)["rgba"][0, ..., 3])
    assert mask_iou(seen, torch.from_numpy(prepared.rgba[..., 3])) > 0.95
    unmoved = torch.from_numpy(render_views(case.gt_mesh, [view], size, light)["rgba"][0, ..., 3])
    assert mask_iou(unmoved, torch.from_numpy(prepared.rgba[..., 3])) < 0.7

    # End to end with the bundled model on a mesh folder.
    (tmp_path / "meshes").mkdir()
    plate.export(tmp_path / "meshes" / "plate.ply")
    summary = evaluate(load_model(), tmp_path / "meshes", tmp_path / "r", n_points=2000, progress=False, prepare=True,
                       n_grid_cases=0)  # fmt: skip
    assert summary["n_failed"] == 0 and {"mask_iou", "mesh_mask_iou", "depth_ratio"} <= set(summary["mean"])
    with pytest.raises(ValueError, match="prepare applies to models"):
        evaluate("sphere", tmp_path / "meshes", tmp_path / "s", prepare=True, progress=False)


def test_other_views_of_synthetic_cases_see_the_moved_ground_truth_as_rendered(eval_dataset):
    """The views carried by a case (canonical frame, and moved with the truth by ``prepare``) see the ground truth
    exactly as the dataset rendered it: their silhouettes match the stored alphas."""
    from monorecon.core.cameras import PerspectiveCameras
    from monorecon.core.mesh_renderer import render_mesh
    from monorecon.eval.harness import _prepared_case

    for case in load_cases(eval_dataset):
        for seen in (case, _prepared_case(case, 0.7)):
            c2w, fov, rgba = seen.views
            assert c2w.shape == (1, 4, 4) and rgba.shape == (1, 48, 48, 4)  # 2 views: the input and one other
            cameras = PerspectiveCameras(c2w, 48, 48, fov_y_deg=fov)
            alpha = render_mesh(seen.gt_mesh.verts.float(), seen.gt_mesh.faces, cameras, shading="unlit")["alpha"]
            assert mask_iou(alpha, rgba[..., 3]) > 0.97


def test_colour_scores_against_closed_form_psnr():
    """A mesh rendered (unlit, over white) into its own views scores infinite PSNR; colours off by 0.1 on the object
    give 10 log10(1 / (0.01 x the object's share of the pixels)) per view."""
    import trimesh

    from monorecon.core.cameras import PerspectiveCameras
    from monorecon.core.mesh_renderer import render_mesh
    from monorecon.eval.harness import _colour_scores

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.45)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32)
    colours = 0.3 + 0.4 * (verts - verts.min(0).values) / (verts.max(0).values - verts.min(0).values)
    mesh = Mesh(verts, torch.tensor(sphere.faces), vertex_colors=colours)
    c2w = orbit_c2w(torch.tensor([0.0, 90.0, 200.0]), torch.tensor([0.0, 20.0, -10.0]), 1.9)
    fov = torch.tensor([40.0, 40.0, 30.0])
    rendered = render_mesh(verts, mesh.faces, PerspectiveCameras(c2w, 64, 64, fov_y_deg=fov), vertex_colors=colours,
                           shading="unlit", background=(0.0, 0.0, 0.0))  # fmt: skip
    rgba = torch.cat([rendered["rgb"], rendered["alpha"][..., None]], dim=-1)  # straight alpha (hard edges)
    case = EvalCase("ball", "real", rgba[0].numpy(), mesh, (c2w[1:], fov[1:], rgba[1:]))
    exact = _colour_scores(mesh, case)
    assert exact["mesh_psnr"] == math.inf and exact["novel_psnr"] == math.inf
    assert exact["mesh_ssim"] == pytest.approx(1.0) and exact["novel_ssim"] == pytest.approx(1.0)
    off = _colour_scores(Mesh(verts, mesh.faces, vertex_colors=colours + 0.1), case)
    share = rgba[..., 3].mean(dim=(1, 2)).double()
    expected = 10 * torch.log10(1 / (0.01 * share))
    assert off["mesh_psnr"] == pytest.approx(float(expected[0]), abs=0.01)
    assert off["novel_psnr"] == pytest.approx(float(expected[1:].mean()), abs=0.01)
    assert off["novel_ssim"] < 1.0


def _rows(report: Path) -> list[dict[str, str]]:
    with open(report / "per_object.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def silhouette_sphere(rgba: np.ndarray) -> Mesh:
    """A method of one's own (rgba -> Mesh), at module level so that worker processes can receive it."""
    return sphere_baseline(rgba[..., 3])


def test_workers_write_the_same_report_and_forward_warnings(eval_dataset, tmp_path):
    from monorecon.api import load_model
    from monorecon.eval.harness import PredictionFolder

    tiny = load_model(Path(__file__).parent / "data" / "triposr_ref")
    common = {"n_points": 1000, "mc_resolution": 24, "threshold": 1.0, "progress": False, "n_grid_cases": 1}
    for name, method in (("inflation", "inflation"), ("model", tiny), ("function", silhouette_sphere)):
        for workers in (1, 2):
            evaluate(method, eval_dataset, tmp_path / f"{name}{workers}", **common, workers=workers)
        one, two = _rows(tmp_path / f"{name}1"), _rows(tmp_path / f"{name}2")
        assert [r["object_id"] for r in two] == [r["object_id"] for r in one] and len(one) == 2
        for a, b in zip(one, two, strict=True):  # a worker's products run on one thread: float rounding only
            assert a.keys() == b.keys()
            for key in a.keys() - {"object_id", "class"}:
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6, nan_ok=True), (name, key)
        assert (tmp_path / f"{name}2" / "best_worst.png").is_file()

    # A worker's warnings come back to this process.
    from monorecon.io.mesh_io import save_mesh

    folder = tmp_path / "predictions"
    folder.mkdir()
    first, second = load_cases(eval_dataset)
    save_mesh(first.gt_mesh, folder / f"{first.object_id}.ply")
    with pytest.warns(UserWarning, match=f"no prediction for {second.object_id}"):
        summary = evaluate(PredictionFolder(folder), eval_dataset, tmp_path / "p", n_points=500, progress=False,
                           workers=2)  # fmt: skip
    assert summary["n_failed"] == 1
    for bad in (0, 257, 1.5, True):
        with pytest.raises(ValueError, match="workers must"):
            evaluate("sphere", eval_dataset, tmp_path / "bad", workers=bad)


def _pixel_square(size: int, half: int) -> torch.Tensor:
    """Mask of the pixels at most ``half`` rows and columns from the centre pixel of an odd-sized image."""
    index = (torch.arange(size) - size // 2).abs() <= half
    return (index[:, None] & index[None, :]).float()


def _on_grid(values: torch.Tensor, bounds: float, resolution: int) -> torch.Tensor:
    step = 2 * bounds / (resolution - 1)
    offset = (values + bounds) / step
    return (offset - offset.round()).abs() < 1e-3


@pytest.mark.parametrize(
    ("distance", "fov", "scale", "profile"),
    [(1.9, 40.0, 1.0, "cone"), (2.5, 30.0, 0.6, "round"), (2.5, 30.0, 1.3, "cone")],
)
def test_inflation_half_thickness_on_the_axis_is_the_distance_to_the_mask_edge(distance, fov, scale, profile):
    """A 33-pixel image, a square of pixels within 8 rows and columns of the centre pixel: from that pixel's centre
    the nearest mask edge is 8.5 px away, so both profiles (round: sqrt(8.5 (2 * 8.5 - 8.5)) = 8.5) give the
    half-thickness scale * 8.5 * D / f on the view axis, f = (33 / 2) / tan(fov / 2), whatever the camera."""
    camera = input_camera(33, distance=distance, fov_deg=fov)
    torch.testing.assert_close(camera.position[0], torch.tensor([0.0, 0.0, distance]))  # the axis is world z
    focal = 16.5 / math.tan(math.radians(fov / 2))
    expected = scale * 8.5 * distance / focal
    bounds, resolution = 0.6, 61
    verts = inflation_baseline(
        _pixel_square(33, 8), camera, resolution, thickness_scale=scale, bounds=bounds, profile=profile
    ).verts
    axis = verts[(verts[:, 0].abs() < 1e-5) & (verts[:, 1].abs() < 1e-5)]
    assert len(axis) >= 2
    assert axis[:, 2].max().item() == pytest.approx(expected, abs=1e-3)
    assert axis[:, 2].min().item() == pytest.approx(-expected, abs=1e-3)
    # Marching cubes samples `resolution` points per axis over [-bounds, bounds]: a vertex lies on grid lines in at
    # least two of its coordinates.
    assert bool((_on_grid(verts, bounds, resolution).sum(dim=1) >= 2).all())


def test_inflation_reaches_the_mask_edge_and_stays_in_its_bounds():
    """On the plane through the origin (depth D), the cone's slab vanishes at the silhouette's edge: the row through
    the square's centre spans +-8.5 px * D / f, within a quarter pixel; a smaller ``bounds`` clips the mesh."""
    camera = input_camera(33)
    focal = 16.5 / math.tan(math.radians(20.0))
    pixel = 1.9 / focal  # world size of one pixel at the origin's depth
    mask = _pixel_square(33, 8)
    verts = inflation_baseline(mask, camera, resolution=121, bounds=0.6).verts
    row = verts[(verts[:, 1].abs() < 1e-5) & (verts[:, 2].abs() < 1e-5)]
    assert row[:, 0].max().item() == pytest.approx(8.5 * pixel, abs=0.25 * pixel)
    assert row[:, 0].min().item() == pytest.approx(-8.5 * pixel, abs=0.25 * pixel)
    clipped = inflation_baseline(mask, camera, resolution=31, bounds=0.2).verts
    assert clipped.abs().max().item() <= 0.2 + 1e-5 and clipped[:, 2].max().item() > 0.19


def test_sphere_baseline_follows_the_docstring_for_any_camera():
    """An off-axis sphere seen by a camera at distance 2.5, fov 30: the fitted sphere (642 vertices) has the radius
    of the docstring's formula from the silhouette's area, computed here by hand, and its centre on the ray through
    the silhouette's centroid (of pixel centres) at the origin's depth."""
    size, distance, fov = 96, 2.5, 30.0
    camera = input_camera(size, distance=distance, fov_deg=fov)
    true_centre, true_radius = torch.tensor([0.3, -0.2, 0.0]), 0.3
    origins, directions = camera.get_rays()
    oc = origins[0] - true_centre
    b = (oc * directions[0]).sum(-1)
    mask = (b * b - ((oc * oc).sum(-1) - true_radius**2) > 0).float()
    mesh = sphere_baseline(mask, camera)
    assert mesh.verts.shape == (642, 3)
    focal = (size / 2) / math.tan(math.radians(fov / 2))
    ratio = math.sqrt(float(mask.sum()) / math.pi) / focal
    radius = distance * ratio / math.sqrt(1 + ratio**2)
    rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
    u, v = cols.double().mean().item() + 0.5, rows.double().mean().item() + 0.5
    # Camera at (0, 0, D) looking down -z with +y up: pixel (u, v) at depth D is this world point.
    centre = torch.tensor([(u - size / 2) / focal * distance, -(v - size / 2) / focal * distance, 0.0])
    torch.testing.assert_close(centre, true_centre, atol=0.01, rtol=0)  # the formula's premise holds
    fitted = mesh.verts.double().mean(0)
    torch.testing.assert_close(fitted, centre.double(), atol=2e-4, rtol=0)
    distances = (mesh.verts.double() - fitted).norm(dim=-1)
    assert distances.min().item() == pytest.approx(radius, rel=2e-4)
    assert distances.max().item() == pytest.approx(radius, rel=2e-4)
    assert radius == pytest.approx(true_radius, rel=0.03)


def test_baselines_refuse_a_camera_that_does_not_image_the_silhouette():
    """A 64x48 silhouette: the default input camera is square, so it would put a centred disc 0.17 world units off
    the view axis; a camera of another size would misplace it too. Both are errors, and a camera of the mask's
    size (same pixel focal length) centres the disc."""
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(48), indexing="ij")
    mask = (((rows - 31.5) ** 2 + (cols - 23.5) ** 2) <= 12.0**2).float()
    for baseline in (sphere_baseline, inflation_baseline):
        with pytest.raises(ValueError, match=r"default input camera is square.*64x48"):
            baseline(mask)
        with pytest.raises(ValueError, match="64x48 pixels but the camera's image is 64x64"):
            baseline(mask, input_camera(64))
    camera = PerspectiveCameras(orbit_c2w(0.0, 0.0, 1.9), 64, 48, fov_y_deg=40.0)
    torch.testing.assert_close(sphere_baseline(mask, camera).verts.mean(0), torch.zeros(3), atol=1e-4, rtol=0)


def test_inflation_of_a_silhouette_cut_by_the_image_border_stays_in_the_viewing_frustum():
    """The docstring's solid is a part of the viewing frustum: a silhouette touching the image's left border is cut
    by the frustum's side (its mesh reaches u = 0 and goes no further), not stretched out to the meshing cube."""
    camera = input_camera(33)
    mask = torch.zeros(33, 33)
    mask[12:21, 0:10] = 1.0
    verts = inflation_baseline(mask, camera, resolution=61).verts
    u = camera.transform_points_screen(verts)[0][:, 0]
    assert u.min().item() == pytest.approx(0.0, abs=1e-3)
    assert verts[:, 0].min().item() > -0.87 + 0.05  # the cube's side (bounds 0.87) is not reached


def test_baselines_count_only_alpha_above_one_half_as_silhouette():
    """Foreground is alpha > 0.5: a fringe of pixels at exactly 0.5 changes nothing, and a mask of only 0.5 is empty."""
    square = _pixel_square(33, 6)
    fringe = torch.where((_pixel_square(33, 8) > 0) & (square == 0), 0.5, square)
    torch.testing.assert_close(sphere_baseline(fringe).verts, sphere_baseline(square).verts)
    for baseline in (sphere_baseline, inflation_baseline):
        with pytest.raises(ValueError, match="silhouette is empty"):
            baseline(torch.full((33, 33), 0.5))


def test_eval_command_scores_a_method_named_module_colon_function(eval_dataset, tmp_path, monkeypatch, capsys):
    """``--model module:name`` imports a method from the current folder: a function is scored as the Python API
    scores it (the same report), a model class is instantiated and takes model options; a name that does not
    resolve is one line and exit code 2."""
    from monorecon import cli
    from test_reconstruct_cli import OWN_MODELS

    (tmp_path / "mymethods.py").write_text(OWN_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # removed again after the test (the command adds the folder too)
    import mymethods

    args = ["eval", "--data", str(eval_dataset), "--points", "500", "--volume-iou", "0", "--quiet"]
    assert cli.main([*args, "--model", "mymethods:ball", "-o", "cli", "--workers", "2"]) == 0  # workers import it
    evaluate(mymethods.ball, eval_dataset, "api", 500, volume_iou_resolution=0, progress=False)

    def scores(report: str) -> list[dict]:
        rows = list(csv.DictReader(open(tmp_path / report / "per_object.csv")))
        return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]

    assert scores("cli") == scores("api") and len(scores("cli")) == 2

    assert cli.main([*args, "--model", "mymethods:BallModel", "--threshold", "0.25", "--mc-resolution", "16",
                     "-o", "model"]) == 0  # fmt: skip
    assert mymethods.BallModel.levels == [0.25, 0.25]  # one mesh per object, at the level asked
    assert len(scores("model")) == 2 and all(float(row["fscore@0.5"]) > 0 for row in scores("model"))
    capsys.readouterr()

    for model, needle in [
        ("mymethods:ball --threshold 5", "--threshold applies only to models"),
        ("nosuchmodule:ball", "cannot import nosuchmodule"),
        ("mymethods:nothing", "mymethods has no nothing"),
    ]:
        name, *extra = model.split()
        assert cli.main([*args, "--model", name, *extra, "-o", "bad"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "bad").exists()
