"""Paired comparison of two evaluation reports (``monorecon eval-compare REPORT_A REPORT_B``).

Two reports of the same cases (the ``per_object.csv`` that :func:`monorecon.eval.harness.evaluate` writes) are
compared case by case: the mean of ``B - A``, its standard error, a 95 % interval, and the cases won and lost. Several
cases of one object (views ``<name>@<azimuth>`` of a real mesh) are not independent, so the standard error is also
given **clustered by object**: the per-object mean differences are treated as the samples. With a handful of meshes
that is the honest one.

The 95 % intervals are mean ± t · SE with Student-t quantiles, not the normal 1.96: ``t(0.975, n - 1)`` for the SE
by case (n cases) and ``t(0.975, G - 1)`` for the SE by object (G objects), e.g. 12.71 with two objects, 4.30 with
three, 2.78 with five. With fewer than two cases (or objects) there is no spread to estimate: no SE and no interval.

Each report records how it was made (``protocol`` in its ``summary.json``); a warning says where the two differ in
an entry of :data:`PROTOCOL_KEYS` (their differences then mix the methods' with the protocols'), or that a report made
before the protocol was recorded cannot be checked.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

__all__ = ["PROTOCOL_KEYS", "compare_reports", "format_comparison", "read_protocol", "read_report", "t95"]

PROTOCOL_KEYS = (
    "data", "mesh_azimuths", "mesh_elevation", "n_points", "seed", "render_size", "volume_iou_resolution",
    "thresholds",
)  # fmt: skip
"""The entries of a report's ``protocol`` that change the numbers of any method on a shared case. The method's own
settings (``prepare`` included) are what two reports compare; ``split`` and ``max_objects`` only pick the cases."""


def t95(df: int) -> float:
    """Two-sided 95 % Student-t quantile ``t(0.975, df)`` (NaN below one degree of freedom)."""
    return float(scipy.stats.t.ppf(0.975, df)) if df >= 1 else math.nan


def _interval(mean: float, se: float, df: int) -> tuple[float, float]:
    half = t95(df) * se
    return (mean - half, mean + half)


def read_report(report: str | os.PathLike, metric: str) -> dict[str, float]:
    """``object_id -> value of metric`` from a report folder or its ``per_object.csv``.

    A case whose value is ``nan`` (a metric not defined there, as the harness writes the Chamfer distance of a failed
    case or the volume IoU of an open ground truth) maps to NaN, as does an empty cell (older reports wrote one for a
    metric a failed case did not have).

    Raises:
        ValueError: missing or unreadable file, no such metric column, a value that is neither a finite number nor
            ``nan``, or a repeated object id.
    """
    path = Path(report)
    if path.is_dir():
        path = path / "per_object.csv"
    if not path.is_file():
        raise ValueError(f"no evaluation report at {path} (give a report folder or its per_object.csv)")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not rows or "object_id" not in rows[0]:
        raise ValueError(f"{path} has no per-object rows")
    if metric not in rows[0]:
        known = [k for k in rows[0] if k not in ("object_id", "class", "failed")]
        raise ValueError(f"{path} has no column {metric!r}; it has {', '.join(known)}")
    values: dict[str, float] = {}
    for row in rows:
        object_id = row["object_id"]
        try:
            value = float(row[metric])
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) and row[metric] not in ("nan", ""):
            raise ValueError(f"{path}: {metric} of {object_id} is {row[metric]!r}, not a finite number")
        if object_id in values:
            raise ValueError(f"{path}: object {object_id} appears twice")
        values[object_id] = value
    return values


def read_protocol(report: str | os.PathLike) -> dict[str, Any] | None:
    """The protocol a report records (``protocol`` in the ``summary.json`` beside its ``per_object.csv``), or None
    for a report made before protocols were recorded (or without a readable ``summary.json``)."""
    path = Path(report)
    try:
        summary = json.loads(((path if path.is_dir() else path.parent) / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    protocol = summary.get("protocol") if isinstance(summary, dict) else None
    return protocol if isinstance(protocol, dict) else None


def _check_protocols(report_a: str | os.PathLike, report_b: str | os.PathLike) -> list[str]:
    """The entries of :data:`PROTOCOL_KEYS` where the two reports' protocols differ, each warned about in one line
    (or a warning that a report records none, and an empty list)."""
    protocols = {report: read_protocol(report) for report in (report_a, report_b)}
    unrecorded = [str(report) for report, protocol in protocols.items() if protocol is None]
    if unrecorded:
        warnings.warn(
            f"{' and '.join(unrecorded)} {'records' if len(unrecorded) == 1 else 'record'} no protocol (made by an "
            "older monorecon): cannot check that the two reports were scored alike",
            stacklevel=3,
        )
        return []
    a, b = protocols[report_a], protocols[report_b]
    differences = [
        f"{k} {json.dumps(a.get(k))} vs {json.dumps(b.get(k))}" for k in PROTOCOL_KEYS if a.get(k) != b.get(k)
    ]
    if differences:
        warnings.warn(
            f"the reports were scored differently ({'; '.join(differences)}): their differences mix the methods' "
            "with the protocols'",
            stacklevel=3,
        )
    return differences


def _object_of(case_id: str) -> str:
    """``bunny@22.5`` -> ``bunny``; a synthetic object id is its own object."""
    return case_id.rsplit("@", 1)[0]


def compare_reports(
    report_a: str | os.PathLike, report_b: str | os.PathLike, metric: str = "fscore@0.1"
) -> dict[str, Any]:
    """Compare two reports on the cases they share.

    Args:
        report_a, report_b: report folders (or their ``per_object.csv``), e.g. a baseline and a model.
        metric: a per-object column, e.g. ``fscore@0.1``, ``chamfer``, ``mask_iou``.

    Returns:
        dict with ``metric``, ``n_cases``, ``n_objects``, ``mean_a``, ``mean_b``, ``difference`` (mean of B - A),
        ``se`` / ``ci95`` (over cases; the interval mean ± t(0.975, ``df``) · SE, ``df`` = cases - 1; NaN with one
        case), ``se_clustered`` / ``ci95_clustered`` (over objects' mean differences, ``df_clustered`` = objects - 1;
        NaN with one object), ``b_higher`` / ``a_higher`` / ``ties`` (case counts), ``only_a`` / ``only_b`` (cases in
        one report only, left out), ``unscored`` (shared cases left out because the metric is NaN in either report),
        ``per_object`` (object -> dict(n, mean_a, mean_b, difference)) and ``protocol_differences`` (the entries of
        :data:`PROTOCOL_KEYS` where the reports' protocols differ, each also warned about; a report that records no
        protocol is warned about too).

    Raises:
        ValueError: unreadable reports (:func:`read_report`) or no case in common where both have the metric.
    """
    a, b = read_report(report_a, metric), read_report(report_b, metric)
    both = set(a) & set(b)
    shared = sorted(k for k in both if math.isfinite(a[k]) and math.isfinite(b[k]))
    if not both:
        raise ValueError(f"the two reports share no case (e.g. {next(iter(a))!r} vs {next(iter(b))!r})")
    if not shared:
        raise ValueError(
            f"{metric} is not defined (nan) in one report or the other in each of their {len(both)} shared cases"
        )
    protocol_differences = _check_protocols(report_a, report_b)  # once the reports compare (an error stays one line)
    value_a, value_b = np.array([a[k] for k in shared]), np.array([b[k] for k in shared])
    difference = value_b - value_a
    mean = float(difference.mean())
    se = float(difference.std(ddof=1) / math.sqrt(len(shared))) if len(shared) > 1 else math.nan
    cases_of: dict[str, list[int]] = {}
    for index, case_id in enumerate(shared):
        cases_of.setdefault(_object_of(case_id), []).append(index)
    objects = sorted(cases_of)
    per_object = {}
    for name in objects:
        rows = cases_of[name]
        per_object[name] = {
            "n": len(rows),
            "mean_a": float(value_a[rows].mean()),
            "mean_b": float(value_b[rows].mean()),
            "difference": float(difference[rows].mean()),
        }
    # Clustered: each object's mean difference is one sample, weighted by its case count (the overall mean above).
    object_difference = np.array([per_object[name]["difference"] for name in objects])
    weights = np.array([per_object[name]["n"] for name in objects], dtype=float)
    se_clustered = math.nan
    if len(objects) > 1:
        residual = weights * (object_difference - mean)
        # CR1-style sandwich estimate of the weighted mean's variance, with the small-sample factor G / (G - 1).
        se_clustered = float(np.sqrt((residual**2).sum() * len(objects) / (len(objects) - 1)) / weights.sum())
    return {
        "metric": metric,
        "n_cases": len(shared),
        "n_objects": len(objects),
        "mean_a": float(value_a.mean()),
        "mean_b": float(value_b.mean()),
        "difference": mean,
        "se": se,
        "df": len(shared) - 1,
        "ci95": _interval(mean, se, len(shared) - 1),
        "se_clustered": se_clustered,
        "df_clustered": len(objects) - 1,
        "ci95_clustered": _interval(mean, se_clustered, len(objects) - 1),
        "b_higher": int((difference > 0).sum()),
        "a_higher": int((difference < 0).sum()),
        "ties": int((difference == 0).sum()),
        "only_a": len(set(a) - set(b)),
        "only_b": len(set(b) - set(a)),
        "unscored": len(both) - len(shared),
        "per_object": per_object,
        "protocol_differences": protocol_differences,
    }


def format_comparison(result: dict[str, Any], name_a: str = "A", name_b: str = "B", per_object: bool = True) -> str:
    """The comparison as Markdown: one summary line, then (optionally) a per-object table.

    Intervals are printed as ``95 % (t, df N) lo .. hi`` (Student-t, see the module docstring); with one case or one
    object the line says that there is no SE (nor interval) instead of printing NaNs.
    """
    r = result
    if r["n_cases"] < 2:
        spread = "only 1 shared case: no SE or 95 % interval (needs 2 or more)"
    else:
        spread = f"SE {r['se']:.4f} by case, 95 % (t, df {r['df']}) {r['ci95'][0]:+.4f} .. {r['ci95'][1]:+.4f}; "
        if r["n_objects"] < 2:
            spread += "only 1 object: no SE by object (needs 2 or more)"
        else:
            low, high = r["ci95_clustered"]
            df = r["df_clustered"]
            spread += f"SE {r['se_clustered']:.4f} by object, 95 % (t, df {df}) {low:+.4f} .. {high:+.4f}"
    lines = [
        f"{r['metric']}: {name_a} {r['mean_a']:.4f}, {name_b} {r['mean_b']:.4f} over {r['n_cases']} cases "
        f"({r['n_objects']} objects); {name_b} - {name_a} = {r['difference']:+.4f} ({spread}); "
        f"{name_b} higher in {r['b_higher']}, {name_a} higher in {r['a_higher']}, ties {r['ties']}"
    ]
    if r["only_a"] or r["only_b"]:
        lines[0] += f"; left out: {r['only_a']} cases only in {name_a}, {r['only_b']} only in {name_b}"
    if r["unscored"]:
        lines[0] += f"; left out: {r['unscored']} cases where {r['metric']} is not defined (nan) in either report"
    if per_object and r["n_objects"] > 1 and r["n_objects"] < r["n_cases"]:
        lines += ["", f"| object | cases | {name_a} | {name_b} | {name_b} - {name_a} |", "|---|---|---|---|---|"]
        for name, o in r["per_object"].items():
            lines.append(f"| {name} | {o['n']} | {o['mean_a']:.4f} | {o['mean_b']:.4f} | {o['difference']:+.4f} |")
    return "\n".join(lines)
