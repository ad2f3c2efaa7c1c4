"""The code of ``docs/extending.md`` runs as written, in order, and does what the page says it does."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "extending.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def page_run(tmp_path_factory) -> tuple[dict, str, Path]:
    """Every block of the page, run in one namespace from a folder holding a copy of examples/."""
    folder = tmp_path_factory.mktemp("extending")
    shutil.copytree(REPO / "examples", folder / "examples")
    namespace: dict = {"__name__": "extending"}
    printed = io.StringIO()
    with contextlib.chdir(folder), contextlib.redirect_stdout(printed):
        for block in python_blocks(PAGE):
            exec(compile(block, str(PAGE), "exec"), namespace)
    return namespace, printed.getvalue(), folder


def test_the_page_has_its_examples():
    assert len(python_blocks(PAGE)) == 8


def test_the_methods_are_scored_and_compared(page_run):
    namespace, printed, folder = page_run
    for report in ("report_slab", "report_inflation"):
        assert {"per_object.csv", "summary.md", "summary.json", "best_worst.png"} <= {
            p.name for p in (folder / report).iterdir()
        }
    slab, inflation = namespace["slab"]["mean"]["fscore@0.1"], namespace["inflation"]["mean"]["fscore@0.1"]
    assert 0.3 < slab <= 1 and 0.3 < inflation <= 1  # both meshes are near the objects
    assert f"F@0.1: slab {slab:.3f}, inflation {inflation:.3f}" in printed
    comparison = namespace["comparison"]
    assert comparison["n_cases"] == 4 and comparison["difference"] == pytest.approx(slab - inflation, abs=1e-5)
    assert "fscore@0.1: inflation" in printed


def test_the_slab_method_is_the_silhouette_cone_cut_to_its_slab(page_run):
    """Independent check of the example method on a disc: every vertex lies in the slab |z| <= 0.25 (plus a cell)
    and projects into the disc (plus a cell) by the pinhole formulas of the input camera."""
    namespace, _, _ = page_run
    size, radius = 64, 12.0
    rows, cols = np.mgrid[:size, :size] + 0.5
    rgba = np.zeros((size, size, 4), np.float32)
    rgba[..., 3] = np.hypot(cols - 30, rows - 36) < radius
    verts = namespace["silhouette_slab"](rgba).verts.numpy().astype(np.float64)
    cell = 1.74 / 63
    assert np.abs(verts[:, 2]).max() <= 0.25 + cell and np.abs(verts[:, 2]).max() > 0.25 - cell
    focal = size / 2 / np.tan(np.radians(20))
    depth = 1.9 - verts[:, 2]
    u, v = size / 2 + focal * verts[:, 0] / depth, size / 2 - focal * verts[:, 1] / depth
    assert np.hypot(u - 30, v - 36).max() < radius + focal * cell / (1.9 - 0.25)


def test_the_own_model_runs_through_reconstruct_and_the_server(page_run):
    namespace, printed, folder = page_run
    assert sorted(p.name for p in (folder / "out" / "mug").iterdir()) == ["input.png", "mesh.glb", "result.json"]
    mesh = namespace["result"].mesh
    # The ball of radius 0.5 (plus a grid cell) cut to the silhouette's cone: never outside the ball.
    assert mesh.verts.norm(dim=-1).max() < 0.5 + 1.74 / 63
    assert mesh.verts[:, 0].max() - mesh.verts[:, 0].min() > 0.7  # as wide as the ball: the mug spans the frame
    answer = namespace["answer"]
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == 'attachment; filename="mug_result.zip"'
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert sorted(archive.namelist()) == ["input.png", "mesh.glb", "result.json"]
    assert f"200 {answer.headers['content-disposition']}" in printed


def test_the_own_model_is_scored_like_the_bundled_one(page_run):
    """The ball model goes through the harness's model path (carved to the silhouette's cone: its meshes follow
    the inputs' outlines, mesh mask IoU near 1) and, having no renderer, gets no volume-render scores."""
    namespace, printed, _ = page_run
    ball = namespace["ball"]
    assert ball["n_objects"] == 4 and ball["n_failed"] == 0 and ball["method"] == "BallModel"
    assert ball["mean"]["mesh_mask_iou"] > 0.8 and 0.3 < ball["mean"]["fscore@0.1"] <= 1
    assert "psnr" not in ball["mean"] and "mask_iou" not in ball["mean"]
    assert f"F@0.1: ball {ball['mean']['fscore@0.1']:.3f}" in printed
