"""Guards from a user trial of ``eval`` / ``eval-compare`` / ``metrics``: reports with failed cases that
``eval-compare`` reads, the protocol a report records, duplicate case IDs, volume IoU and depth ratio that ignore
stray vertices and face orientation, a case whose method raises, outputs checked before the scoring, and options
that do not apply refused."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml

from monorecon.cli import main
from monorecon.core.mesh import Mesh
from monorecon.eval import harness
from monorecon.eval.baselines import sphere_baseline
from monorecon.eval.compare import compare_reports, read_report
from monorecon.eval.metrics import depth_ratio, solid_occupancy, volume_iou
from test_eval_compare import _report
from test_eval_fixes import _box

FAST = {"n_points": 500, "volume_iou_resolution": 16, "n_grid_cases": 0, "progress": False}
"""Keyword arguments of a quick :func:`harness.evaluate` run."""


@pytest.fixture(scope="module")
def mesh_folder(tmp_path_factory) -> Path:
    """Two closed meshes: a ball and a cube (their input silhouettes differ in area)."""
    folder = tmp_path_factory.mktemp("guards") / "meshes"
    folder.mkdir()
    trimesh.creation.icosphere(subdivisions=2).export(folder / "ball.ply")
    trimesh.creation.box().export(folder / "cube.ply")
    return folder


def _fails_on(object_id: str, folder: Path, failure: str = "none"):
    """A method that makes the silhouette's sphere (:func:`sphere_baseline`), except for case ``object_id``: no mesh
    (``"none"``), a mesh of zero area (``"flat"``) or an exception (``"raise"``)."""
    alpha_of = {case.object_id: case.rgba[..., 3].sum() for case in harness.load_cases(folder)}

    def method(rgba: np.ndarray) -> Mesh | None:
        if not math.isclose(rgba[..., 3].sum(), alpha_of[object_id]):
            return sphere_baseline(rgba[..., 3])
        if failure == "raise":
            raise RuntimeError("method crashed on this input")
        if failure == "flat":
            return Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]))
        return None

    return method


def _header(report: Path) -> list[str]:
    with open(report / "per_object.csv", newline="") as f:
        return next(csv.reader(f))


def _rows(report: Path) -> dict[str, dict[str, str]]:
    with open(report / "per_object.csv", newline="") as f:
        return {row["object_id"]: row for row in csv.DictReader(f)}


# ---- 1. a failed case: mask IoU 0, undefined scores nan, fixed columns, readable by eval-compare -------------------
def test_a_failed_case_scores_mask_iou_zero_and_eval_compare_reads_the_report(mesh_folder, tmp_path):
    harness.evaluate(_fails_on("ball", mesh_folder), mesh_folder, tmp_path / "ball", **FAST)
    harness.evaluate(_fails_on("cube", mesh_folder), mesh_folder, tmp_path / "cube", **FAST)
    harness.evaluate("sphere", mesh_folder, tmp_path / "ok", **FAST)
    # The columns do not depend on which case failed first.
    assert _header(tmp_path / "ball") == _header(tmp_path / "cube") == _header(tmp_path / "ok")
    failed = _rows(tmp_path / "ball")["ball"]
    assert failed["failed"] == "1" and float(failed["fscore@0.1"]) == 0.0
    # An empty silhouette against the object's: IoU 0, in every view; depth and Chamfer are not defined.
    assert float(failed["mesh_mask_iou"]) == 0.0 and float(failed["novel_mask_iou"]) == 0.0
    assert failed["depth_ratio"] == "nan" and failed["chamfer"] == "nan"
    summary = json.loads((tmp_path / "ball" / "summary.json").read_text())
    assert summary["n_scored"]["mesh_mask_iou"] == 2 and summary["n_scored"]["depth_ratio"] == 1
    cube_iou = float(_rows(tmp_path / "ball")["cube"]["mesh_mask_iou"])
    assert summary["mean"]["mesh_mask_iou"] == pytest.approx(cube_iou / 2, rel=1e-5)

    result = compare_reports(tmp_path / "ok", tmp_path / "ball", "mesh_mask_iou")
    assert result["n_cases"] == 2 and result["mean_b"] == pytest.approx(cube_iou / 2, rel=1e-5)
    depth = compare_reports(tmp_path / "ok", tmp_path / "ball", "depth_ratio")
    assert depth["n_cases"] == 1 and depth["unscored"] == 1


def test_empty_cells_of_older_reports_read_as_not_defined(tmp_path):
    _report(tmp_path / "old", {"m@0": "", "m@90": 0.5})
    values = read_report(tmp_path / "old", "fscore@0.1")
    assert math.isnan(values["m@0"]) and values["m@90"] == 0.5


# ---- 2. the protocol: recorded, and checked by eval-compare ---------------------------------------------------------
def test_reports_record_their_protocol_and_eval_compare_warns_where_they_differ(mesh_folder, tmp_path, capsys):
    common = ["eval", "--model", "sphere", "--data", str(mesh_folder), "--volume-iou", "16", "--quiet"]
    assert main([*common, "--points", "500", "-o", str(tmp_path / "a"), "--azimuths", "30,120"]) == 0
    assert main([*common, "--points", "600", "-o", str(tmp_path / "b"), "--azimuths", "30,120"]) == 0
    protocol = json.loads((tmp_path / "a" / "summary.json").read_text())["protocol"]
    assert protocol["n_points"] == 500 and protocol["mesh_azimuths"] == [30.0, 120.0]
    assert protocol["seed"] == 0 and protocol["volume_iou_resolution"] == 16
    assert protocol["data"] == str(mesh_folder.resolve()) and protocol["method"]["name"] == "sphere"
    assert "n_points 500" in (tmp_path / "a" / "summary.md").read_text()
    capsys.readouterr()

    assert main(["eval-compare", str(tmp_path / "a"), str(tmp_path / "b"), "--no-per-object"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "n_points 500 vs 600" in warning[0] and "seed" not in warning[0]
    assert main(["eval-compare", str(tmp_path / "a"), str(tmp_path / "a"), "--no-per-object"]) == 0
    assert capsys.readouterr().err == ""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "per_object.csv").write_bytes((tmp_path / "a" / "per_object.csv").read_bytes())
    assert main(["eval-compare", str(tmp_path / "old"), str(tmp_path / "a"), "--no-per-object"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no protocol" in err[0] and "cannot check" in err[0]


def test_a_models_protocol_names_its_weights_by_their_hash():
    def network() -> torch.nn.Module:  # with a 0-dim buffer (BatchNorm's step count)
        return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))

    first, same = network(), network()
    same.load_state_dict(first.state_dict())
    assert harness._weights_hash(first) == harness._weights_hash(same)
    with torch.no_grad():
        same[0].bias[0] += 1e-6
    assert harness._weights_hash(first) != harness._weights_hash(same)


# ---- 3. duplicate case IDs ------------------------------------------------------------------------------------------
def test_duplicate_case_ids_are_refused_up_front(mesh_folder, tmp_path, capsys):
    folder = tmp_path / "twice"
    folder.mkdir()
    for suffix in ("ply", "obj"):
        trimesh.creation.box().export(folder / f"cube.{suffix}")
    with pytest.raises(ValueError, match=r"cube\.obj, cube\.ply in .* would be cases of the same ID"):
        harness.load_cases(folder)
    for azimuths in ((10.0, 10.0000001), (30.0, 390.0), (-90.0, 270.0)):
        with pytest.raises(ValueError, match="are the same view"):
            harness.load_cases(mesh_folder, mesh_azimuths=azimuths)
    assert len(harness.load_cases(mesh_folder, mesh_azimuths=(30.0, 210.0))) == 4
    common = ["eval", "--model", "sphere", "--data", str(mesh_folder), "-o", str(tmp_path / "r"), "--quiet"]
    assert main([*common, "--azimuths", "30,390"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "30.0 and 390.0 are the same view" in err[0]
    assert not (tmp_path / "r").exists()


# ---- 4, 5. volume IoU and depth ratio: the surface only, either orientation ----------------------------------------
def _with_stray_vertex(mesh: Mesh, position: tuple[float, float, float]) -> Mesh:
    return Mesh(torch.cat([mesh.verts, torch.tensor([position], dtype=mesh.verts.dtype)]), mesh.faces)


def _flipped(mesh: Mesh) -> Mesh:
    return Mesh(mesh.verts, mesh.faces.flip(1))


def test_an_unreferenced_vertex_changes_neither_volume_iou_nor_depth_ratio():
    cube, shifted = _box(), _box(centre=(0.5, 0.0, 0.0))
    assert volume_iou(_with_stray_vertex(cube, (40.0, 40.0, 40.0)), cube, 32) == 1.0
    # Two unit cubes overlapping by half: 0.5 / 1.5 (the 32^3 grid resolves it to a cell).
    stray = _with_stray_vertex(shifted, (-40.0, 0.0, 0.0))
    assert volume_iou(stray, cube, 32) == pytest.approx(1 / 3, abs=0.02)
    flat = _box(extents=(1.0, 1.0, 0.5))
    assert depth_ratio(_with_stray_vertex(flat, (0.0, 0.0, 40.0)), cube) == pytest.approx(0.5)
    assert depth_ratio(cube, _with_stray_vertex(cube, (30.0, 0.0, 0.0))) == pytest.approx(1.0)


def test_inward_facing_solids_occupy_what_outward_ones_do():
    cube, shifted = _box(), _box(centre=(0.5, 0.0, 0.0))
    assert _flipped(cube).is_closed
    assert np.array_equal(solid_occupancy(_flipped(cube), -1.0, 1.0, 16), solid_occupancy(cube, -1.0, 1.0, 16))
    assert volume_iou(_flipped(cube), cube, 32) == 1.0
    # On a grid whose cells the faces bound exactly (1/16 wide): unit cubes overlapping by half, 0.5 / 1.5 ...
    grid = {"resolution": 32, "bounds": (-1.0, 1.0)}
    assert volume_iou(_flipped(shifted), cube, **grid) == pytest.approx(1 / 3)
    # ... and a cube with a half-size cavity (its faces inward, as a hollow's are): 1 - 1/8 of the cube's volume.
    hollow = Mesh(torch.cat([cube.verts, cube.verts * 0.5]), torch.cat([cube.faces, cube.faces.flip(1) + 8]))
    assert volume_iou(hollow, cube, **grid) == pytest.approx(1 - 0.5**3)


# ---- 6. a case that fails on its own, and outputs checked before the scoring ----------------------------------------
def test_a_method_that_raises_fails_its_case_only(mesh_folder, tmp_path):
    method = _fails_on("cube", mesh_folder, "raise")
    with pytest.warns(UserWarning, match="case cube scored as a failure: RuntimeError: method crashed"):
        summary = harness.evaluate(method, mesh_folder, tmp_path / "r", **FAST)
    assert summary["n_failed"] == 1 and summary["errors"] == {"cube": "RuntimeError: method crashed on this input"}
    rows = _rows(tmp_path / "r")
    assert rows["cube"]["failed"] == "1" and float(rows["ball"]["fscore@0.5"]) > 0.9
    assert "cube: RuntimeError: method crashed on this input" in (tmp_path / "r" / "summary.md").read_text()


def test_a_zero_area_mesh_is_no_surface(mesh_folder, tmp_path):
    summary = harness.evaluate(_fails_on("ball", mesh_folder, "flat"), mesh_folder, tmp_path / "r", **FAST)
    assert summary["n_failed"] == 1 and summary["errors"] == {}
    assert float(_rows(tmp_path / "r")["ball"]["mesh_mask_iou"]) == 0.0


def test_eval_command_reports_a_raising_method_in_one_line_and_exits_2(mesh_folder, tmp_path, monkeypatch, capsys):
    (tmp_path / "crashing.py").write_text("def method(rgba):\n    raise RuntimeError('method crashed')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["eval", "--model", "crashing:method", "--data", str(mesh_folder), "-o", "r", "--points", "500", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "case ball scored as a failure: RuntimeError: method crashed" in err
    assert "2 cases failed with an error" in err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["n_failed"] == 2


def _never_called(rgba: np.ndarray) -> Mesh:
    raise AssertionError("scored before the outputs were checked")


def test_report_outputs_are_checked_before_any_scoring_or_writing(mesh_folder, tmp_path):
    (tmp_path / "afile").write_text("a file")
    with pytest.raises(ValueError, match="afile is a file"):
        harness.evaluate(_never_called, mesh_folder, tmp_path / "afile" / "sub", **FAST)
    report = tmp_path / "report"
    (report / "summary.json").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"summary\.json: it is a folder"):
        harness.evaluate(_never_called, mesh_folder, report, **FAST)
    assert sorted(path.name for path in report.iterdir()) == ["summary.json"]  # nothing else written
    (report / "summary.json").rmdir()
    (report / "best_worst.png").mkdir()
    with pytest.raises(ValueError, match=r"best_worst\.png: it is a folder"):
        harness.evaluate(_never_called, mesh_folder, report, **{**FAST, "n_grid_cases": 1})


# ---- 7, 8. eval's options: --config, and options that do not apply --------------------------------------------------
def test_eval_passes_config_to_the_model_loader(mesh_folder, tmp_path, monkeypatch, capsys):
    import monorecon.api

    loaded = []

    def fake_load_model(weights, config=None, device="cpu"):
        loaded.append((weights, config))
        raise ValueError("stop here")

    monkeypatch.setattr(monorecon.api, "load_model", fake_load_model)
    common = ["eval", "--data", str(mesh_folder), "-o", str(tmp_path / "r"), "--device", "cpu", "--quiet"]
    assert main([*common, "--model", "weights.ckpt", "--config", "my.yaml"]) == 2
    assert loaded == [("weights.ckpt", Path("my.yaml"))] and "stop here" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model", "sphere", "--mc-resolution", "16"], "--mc-resolution applies only to models"),
        (["--model", "inflation", "--config", "c.yaml"], "--config applies only to model weights"),
        (["--predictions", "PRED", "--volume-iou", "128"], "--volume-iou applies only to methods scored in the"),
    ],
)
def test_eval_refuses_options_that_do_not_apply(mesh_folder, tmp_path, capsys, options, message):
    (tmp_path / "PRED").mkdir()
    options = [str(tmp_path / "PRED") if option == "PRED" else option for option in options]
    assert main(["eval", *options, "--data", str(mesh_folder), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


# ---- 9. metrics --json never replaces an input ----------------------------------------------------------------------
def test_metrics_json_refuses_to_overwrite_an_input(tmp_path, capsys):
    trimesh.creation.box().export(tmp_path / "box.ply")
    trimesh.creation.icosphere().export(tmp_path / "ball.ply")
    before = {name: (tmp_path / name).read_bytes() for name in ("box.ply", "ball.ply")}
    for target in ("box.ply", "ball.ply"):
        command = ["metrics", str(tmp_path / "box.ply"), str(tmp_path / "ball.ply"), "--points", "500"]
        assert main([*command, "--json", str(tmp_path / target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is an input of the command" in err[0]
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


# ---- 10. a data file, and the model card --------------------------------------------------------------------------
def test_data_that_is_a_file_is_said_to_be_one(mesh_folder):
    with pytest.raises(ValueError, match=r"ball\.ply is a file, not a folder"):
        harness.load_cases(mesh_folder / "ball.ply")


def test_model_card_states_the_shipped_mesh_level():
    folder = Path(harness.__file__).parents[1] / "assets" / "default_model"
    level = yaml.safe_load((folder / "config.yaml").read_text())["renderer"]["mesh_threshold"]
    card = (folder / "MODEL_CARD.md").read_text()
    evaluation = card[card.index("## Evaluation") :].split("\n\n")[1]
    assert f"`renderer.mesh_threshold`: {level:g} for the shipped model" in evaluation and "level 7" not in evaluation
