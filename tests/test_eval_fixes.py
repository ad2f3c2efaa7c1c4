"""Fixes from a user trial: Student-t intervals in ``eval-compare`` (and a plain line with fewer than two cases or
objects), no volume IoU for an open scored mesh, and ``metrics --json`` checked before the scoring."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import trimesh

from monorecon.cli import main
from monorecon.core.mesh import Mesh
from monorecon.eval import harness
from monorecon.eval.compare import compare_reports, format_comparison, t95
from test_eval_compare import _report


def _mesh(tm: trimesh.Trimesh) -> Mesh:
    return Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.int64))


def _box(extents=(1.0, 1.0, 1.0), centre=(0.0, 0.0, 0.0)) -> Mesh:
    tm = trimesh.creation.box(extents=extents)
    tm.apply_translation(centre)
    return _mesh(tm)


def _square() -> Mesh:
    """A flat unit square: two triangles, open (it bounds no solid)."""
    return Mesh(
        torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32),
        torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int64),
    )


# ---- eval-compare: Student-t intervals ------------------------------------------------------------------------------
def test_t_quantiles_match_the_table():
    assert t95(1) == pytest.approx(12.706, abs=1e-3)
    assert t95(2) == pytest.approx(4.303, abs=1e-3)
    assert t95(4) == pytest.approx(2.776, abs=1e-3)
    assert t95(30) == pytest.approx(2.042, abs=1e-3)
    assert math.isnan(t95(0))


def test_five_single_case_objects_use_t_with_4_degrees_of_freedom(tmp_path):
    # Differences 0.1 .. 0.5: mean 0.3, sd sqrt(0.025), SE sqrt(0.025 / 5) = 0.070711; t(0.975, 4) = 2.776.
    a = {f"o{k}": 0.5 for k in range(5)}
    b = {f"o{k}": 0.5 + 0.1 * (k + 1) for k in range(5)}
    result = compare_reports(_report(tmp_path / "a", a), _report(tmp_path / "b", b))
    se = math.sqrt(0.025 / 5)
    assert result["difference"] == pytest.approx(0.3)
    assert (result["se"], result["df"]) == (pytest.approx(se), 4)
    assert result["ci95"] == pytest.approx((0.3 - 2.776 * se, 0.3 + 2.776 * se), abs=1e-4)
    # One case per object: the clustered SE (with its G / (G - 1) factor) is the plain one, with the same t.
    assert (result["se_clustered"], result["df_clustered"]) == (pytest.approx(se), 4)
    assert result["ci95_clustered"] == pytest.approx(result["ci95"], abs=1e-4)
    text = format_comparison(result)
    assert f"95 % (t, df 4) {0.3 - 2.7764 * se:+.4f} .. {0.3 + 2.7764 * se:+.4f}" in text


def test_two_objects_give_the_wide_t_interval_with_one_degree_of_freedom(tmp_path):
    # Differences: x (+0.1, +0.3), y (-0.1): mean 0.1. By case: sd 0.2, SE 0.2 / sqrt(3), df 2 (t 4.303).
    # By object: SE 0.4 / 3 (test_eval_compare's hand computation), df 1 (t 12.706), not the normal 1.96.
    a = {"x@0": 0.5, "x@90": 0.5, "y@0": 0.5}
    b = {"x@0": 0.6, "x@90": 0.8, "y@0": 0.4}
    result = compare_reports(_report(tmp_path / "a", a), _report(tmp_path / "b", b))
    se_case, se_object = 0.2 / math.sqrt(3), 0.4 / 3
    assert (result["df"], result["df_clustered"]) == (2, 1)
    assert result["ci95"] == pytest.approx((0.1 - 4.303 * se_case, 0.1 + 4.303 * se_case), abs=1e-3)
    assert result["ci95_clustered"] == pytest.approx((0.1 - 12.706 * se_object, 0.1 + 12.706 * se_object), abs=1e-3)
    text = format_comparison(result)
    assert "(t, df 2)" in text and "(t, df 1) -1.5942 .. +1.7942" in text


def test_fewer_than_two_cases_or_objects_is_said_in_one_plain_line(tmp_path, capsys):
    a = _report(tmp_path / "a", {"m@0": 0.5, "m@90": 0.7, "n@0": 0.4}, "volume_iou")
    b = _report(tmp_path / "b", {"m@0": 0.6, "m@90": float("nan"), "n@0": float("nan")}, "volume_iou")
    text = format_comparison(compare_reports(a, b, "volume_iou"))
    assert len(text.splitlines()) == 1 and "nan" not in text.replace("(nan)", "")
    assert "only 1 shared case: no SE or 95 % interval" in text
    c = _report(tmp_path / "c", {"m@0": 0.5, "m@90": 0.6})
    d = _report(tmp_path / "d", {"m@0": 0.7, "m@90": 0.6})
    assert main(["eval-compare", str(c), str(d)]) == 0
    out = capsys.readouterr().out
    assert "(t, df 1)" in out and "only 1 object: no SE by object" in out and "nan" not in out


# ---- volume IoU: open scored meshes ---------------------------------------------------------------------------------
def test_volume_iou_of_an_open_prediction_is_nan_for_every_seed():
    box = _box()
    assert not _square().is_closed and box.is_closed
    for seed in range(3):
        scores = harness.shape_scores(_square(), box, n_points=500, seed=seed, volume_iou_resolution=16)
        assert math.isnan(scores["volume_iou"]) and math.isfinite(scores["chamfer"])
    assert math.isnan(harness._scored_volume_iou(_square(), box, 16))
    assert harness._scored_volume_iou(None, box, 16) == 0.0  # a failed case still scores 0
    assert math.isnan(harness._scored_volume_iou(box, _square(), 16))  # an open ground truth: not scored


def test_volume_iou_of_closed_solids_is_still_scored():
    # Unit cubes half a side apart, as they lie: intersection 1/2, union 3/2.
    iou = harness._scored_volume_iou(_box(), _box(centre=(0.5, 0.0, 0.0)), 48)
    assert iou == pytest.approx(1 / 3, abs=0.03)
    # shape_scores normalises and aligns both: a box against a copy of itself moved and scaled overlaps it.
    moved = _box((2.0, 2.0, 2.0), (3.0, 1.0, 0.0))
    scores = harness.shape_scores(_box(), moved, n_points=500, volume_iou_resolution=16)
    assert scores["volume_iou"] > 0.9


def test_metrics_cli_says_the_mesh_is_not_closed(tmp_path, capsys):
    trimesh.Trimesh(_square().verts.numpy(), _square().faces.numpy()).export(tmp_path / "square.ply")
    trimesh.creation.box().export(tmp_path / "box.ply")
    args = ["metrics", str(tmp_path / "square.ply"), str(tmp_path / "box.ply"), "--points", "500"]
    assert main([*args, "--volume-iou", "16", "--json", str(tmp_path / "m.json")]) == 0
    assert "volume_iou n/a (the mesh is not closed)" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail)["volume_iou"] is None
    both_open = ["metrics", str(tmp_path / "square.ply"), str(tmp_path / "square.ply"), "--points", "500"]
    assert main([*both_open, "--volume-iou", "16"]) == 0
    assert "volume_iou n/a (the mesh is not closed; the reference is not closed)" in capsys.readouterr().out


def test_eval_leaves_an_open_prediction_unscored(tmp_path):
    (tmp_path / "meshes").mkdir()
    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "meshes" / "ball.ply")
    hemisphere = trimesh.creation.icosphere(subdivisions=2)
    hemisphere = trimesh.Trimesh(
        hemisphere.vertices, hemisphere.faces[hemisphere.vertices[hemisphere.faces].min(axis=1)[:, 1] < 0.2]
    )

    def open_method(rgba: np.ndarray) -> Mesh:
        return _mesh(hemisphere)

    summary = harness.evaluate(
        open_method, tmp_path / "meshes", tmp_path / "r", n_points=500, progress=False, n_grid_cases=0,
        volume_iou_resolution=16,
    )  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "r" / "per_object.csv").open()))
    assert rows[0]["volume_iou"] == "nan" and float(rows[0]["fscore@0.1"]) > 0
    assert summary["n_scored"]["volume_iou"] == 0
    assert "the ground truth or the prediction is not closed" in (tmp_path / "r" / "summary.md").read_text()


# ---- metrics --json: checked before the scoring ---------------------------------------------------------------------
def test_metrics_json_into_a_missing_folder_is_refused_before_scoring(tmp_path, capsys, monkeypatch):
    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before checking --json")

    monkeypatch.setattr(harness, "shape_scores", no_scoring)
    trimesh.creation.box().export(tmp_path / "box.ply")
    box = str(tmp_path / "box.ply")
    assert main(["metrics", box, box, "--json", str(tmp_path / "nodir" / "x.json")]) == 2
    captured = capsys.readouterr()
    assert "cannot write" in captured.err and "nodir" in captured.err and captured.out == ""
    (tmp_path / "folder").mkdir()
    assert main(["metrics", box, box, "--json", str(tmp_path / "folder")]) == 2
    assert "it is a folder" in capsys.readouterr().err
