"""Paired comparison of eval reports: means, standard errors (by case and clustered by object), bad reports."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from monorecon.cli import main
from monorecon.eval.compare import compare_reports, format_comparison


def _report(folder: Path, values: dict[str, float], metric: str = "fscore@0.1") -> Path:
    folder.mkdir(parents=True)
    with open(folder / "per_object.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["object_id", "class", "failed", "chamfer", metric])
        for object_id, value in values.items():
            writer.writerow([object_id, "real", 0, 0.05, value])
    return folder


def test_paired_statistics_match_direct_formulas(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"{mesh}@{az}" for mesh in ("bunny", "duck", "cow", "bone") for az in (0, 90, 180)]
    a = dict(zip(ids, rng.uniform(0.7, 0.9, len(ids)), strict=True))
    b = {k: v + rng.normal(0.02, 0.03) for k, v in a.items()}
    result = compare_reports(_report(tmp_path / "a", a), _report(tmp_path / "b", b))
    diff = np.array([b[k] - a[k] for k in ids])
    assert result["n_cases"] == 12 and result["n_objects"] == 4
    assert result["difference"] == pytest.approx(diff.mean()) == pytest.approx(result["mean_b"] - result["mean_a"])
    assert result["se"] == pytest.approx(diff.std(ddof=1) / math.sqrt(12))
    # Equal cases per object: the clustered SE is the plain SE of the four objects' mean differences.
    per_mesh = diff.reshape(4, 3).mean(1)
    assert result["se_clustered"] == pytest.approx(per_mesh.std(ddof=1) / 2)
    # Student-t 95 % intervals: 12 cases (df 11) by case, 4 objects (df 3) by object
    for interval, se, df in ((result["ci95"], result["se"], 11), (result["ci95_clustered"], result["se_clustered"], 3)):
        t = scipy.stats.t.ppf(0.975, df)
        assert interval == pytest.approx((result["difference"] - t * se, result["difference"] + t * se), rel=1e-6)
    assert result["b_higher"] + result["a_higher"] + result["ties"] == 12
    assert result["per_object"]["duck"]["difference"] == pytest.approx(per_mesh[1])


def test_clustered_se_with_unequal_objects_by_hand(tmp_path):
    # Differences: x has (+0.1, +0.3), y has (-0.1): mean 0.1; cluster sums of residuals 0.2 and -0.2;
    # variance (0.04 + 0.04) * 2 / 1 / 3^2 -> SE 0.1333.
    a = {"x@0": 0.5, "x@90": 0.5, "y@0": 0.5}
    b = {"x@0": 0.6, "x@90": 0.8, "y@0": 0.4}
    result = compare_reports(_report(tmp_path / "a", a), _report(tmp_path / "b", b))
    assert result["difference"] == pytest.approx(0.1)
    assert result["se_clustered"] == pytest.approx(math.sqrt(0.16) / 3)
    assert (result["b_higher"], result["a_higher"], result["ties"]) == (2, 1, 0)
    text = format_comparison(result, "base", "new")
    assert "+0.1000" in text and "| x | 2 | 0.5000 | 0.7000 | +0.2000 |" in text


def test_only_shared_cases_are_compared_and_one_object_has_no_clustered_se(tmp_path):
    a = _report(tmp_path / "a", {"m@0": 0.5, "m@90": 0.7, "extra@0": 0.1})
    b = _report(tmp_path / "b", {"m@0": 0.6, "m@90": 0.9})
    result = compare_reports(a, b / "per_object.csv")
    assert (result["n_cases"], result["only_a"], result["only_b"]) == (2, 1, 0)
    assert (result["mean_a"], result["mean_b"]) == (pytest.approx(0.6), pytest.approx(0.75))  # shared cases only
    assert math.isnan(result["se_clustered"])
    assert "left out: 1 cases only in A" in format_comparison(result)


def test_object_is_the_case_id_before_its_last_at_sign(tmp_path):
    """A view is ``<object>@<azimuth>``: an object name with an ``@`` of its own stays one object, and a case id with
    no ``@`` (a synthetic object) is its own object. Objects here: ``scan@2`` (2 cases), ``scan@3``, ``cube``."""
    a = {"scan@2@0": 0.5, "scan@2@90": 0.5, "scan@3@0": 0.5, "cube": 0.5}
    b = {"scan@2@0": 0.7, "scan@2@90": 0.5, "scan@3@0": 0.4, "cube": 0.6}
    result = compare_reports(_report(tmp_path / "a", a), _report(tmp_path / "b", b))
    assert result["n_objects"] == 3
    assert {name: o["n"] for name, o in result["per_object"].items()} == {"cube": 1, "scan@2": 2, "scan@3": 1}
    assert result["per_object"]["scan@2"]["difference"] == pytest.approx(0.1)
    # Differences +0.2, 0 (a tie), -0.1, +0.1: a tie is counted as neither side higher.
    assert (result["b_higher"], result["a_higher"], result["ties"]) == (2, 1, 1)


def test_per_object_table_only_when_some_object_has_several_cases(tmp_path):
    """With one case per object the table would repeat the cases: only the summary line is printed."""
    a = _report(tmp_path / "a", {"p": 0.5, "q": 0.6})
    b = _report(tmp_path / "b", {"p": 0.7, "q": 0.6})
    text = format_comparison(compare_reports(a, b))
    assert len(text.splitlines()) == 1 and "|" not in text


def test_cases_where_the_metric_is_not_defined_are_left_out_and_counted(tmp_path):
    # The harness writes "nan" where a metric does not apply (the volume IoU of an open ground truth).
    a = _report(tmp_path / "a", {"m@0": 0.5, "m@90": float("nan"), "n@0": 0.4}, "volume_iou")
    b = _report(tmp_path / "b", {"m@0": 0.6, "m@90": 0.9, "n@0": float("nan")}, "volume_iou")
    result = compare_reports(a, b, "volume_iou")
    assert (result["n_cases"], result["unscored"], result["difference"]) == (1, 2, pytest.approx(0.1))
    assert math.isnan(result["se"])  # one case: no spread to estimate, not a zero-width interval
    assert "left out: 2 cases where volume_iou is not defined (nan) in either report" in format_comparison(result)


@pytest.mark.parametrize(
    ("b_values", "metric", "message"),
    [
        ({"other@0": 0.5}, "fscore@0.1", "share no case"),
        ({"m@0": 0.5}, "psnr", "no column 'psnr'"),
        ({"m@0": float("inf")}, "fscore@0.1", "not a finite number"),
        ({"m@0": "high"}, "fscore@0.1", "not a finite number"),
        (
            {"m@0": float("nan")},
            "fscore@0.1",
            "not defined (nan) in one report or the other in each of their 1 shared cases",
        ),
    ],
)
def test_bad_reports_are_one_line_errors(tmp_path, capsys, b_values, metric, message):
    a = _report(tmp_path / "a", {"m@0": 0.5})
    b = _report(tmp_path / "b", b_values)
    assert main(["eval-compare", str(a), str(b), "--metric", metric]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert main(["eval-compare", str(a), str(tmp_path / "missing")]) == 2
    assert "no evaluation report" in capsys.readouterr().err
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "per_object.csv").write_text("object_id,fscore@0.1\nm@0,0.5\nm@0,0.6\n")
    assert main(["eval-compare", str(a), str(tmp_path / "dup")]) == 2
    assert "appears twice" in capsys.readouterr().err
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\x81")
    assert main(["eval-compare", str(a), str(tmp_path / "binary.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("")
    assert main(["eval-compare", str(tmp_path / "empty.csv"), str(a)]) == 2
    assert "no per-object rows" in capsys.readouterr().err


def test_cli_prints_the_summary_and_table(tmp_path, capsys):
    a = _report(tmp_path / "inflation", {"m@0": 0.5, "m@90": 0.7, "n@0": 0.6})
    b = _report(tmp_path / "model", {"m@0": 0.6, "m@90": 0.9, "n@0": 0.5})
    assert main(["eval-compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fscore@0.1: inflation 0.6000, model 0.6667 over 3 cases (2 objects)")
    assert "| m | 2 | 0.6000 | 0.7500 | +0.1500 |" in out
