"""Decimation (``cleanup_mesh(target_faces=...)``) keeps closed surfaces closed, manifold and in one piece.

fast_simplification alone pinches thin tunnels of marching-cubes meshes into edges shared by four faces and folds
tetrahedra into back-to-back face pairs (the reconstructed mug: 9 such edges and 12 doubled faces at 2000 faces).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from monorecon.core.extract import cleanup_mesh, extract_isosurface
from monorecon.core.mesh import Mesh
from monorecon.eval.metrics import chamfer_and_fscore, sample_surface
from monorecon.io import load_mesh
from paths import SHARED_MESHES

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fast_simplification") is None, reason="fast_simplification is not installed"
)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOLERANCE = 0.02  # face count within 2 % of the target (monorecon.core.extract.DECIMATE_TOLERANCE)


def _topology(mesh: Mesh) -> dict[str, int]:
    """Counts over the mesh welded by position: edges by number of faces, doubled faces, pieces."""
    faces = mesh.position_ids()[mesh.faces].numpy()
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, edge_faces = np.unique(edges, axis=0, return_counts=True)
    _, face_copies = np.unique(np.sort(faces, axis=1), axis=0, return_counts=True)
    n = int(faces.max()) + 1
    graph = coo_matrix((np.ones(faces.size), (faces.reshape(-1), np.roll(faces, 1, axis=1).reshape(-1))), (n, n))
    return {
        "open_edges": int((edge_faces == 1).sum()),
        "nonmanifold_edges": int((edge_faces > 2).sum()),
        "doubled_faces": int(face_copies[face_copies > 1].sum()),
        "pieces": connected_components(graph, directed=False)[0],
    }


def _relative_chamfer(mesh: Mesh, reference: Mesh) -> float:
    """Chamfer distance between surface samples, over the reference's bounding-box diagonal."""
    diagonal = float((reference.verts.max(0).values - reference.verts.min(0).values).norm())
    pred, gt = sample_surface(mesh, 20000, seed=1), sample_surface(reference, 20000, seed=2)
    return chamfer_and_fscore(pred, gt)["chamfer"] / diagonal


def _check_decimated(mesh: Mesh, decimated: Mesh, target: int, max_chamfer: float) -> None:
    assert abs(decimated.num_faces - target) <= TOLERANCE * target + 2, decimated.num_faces
    assert decimated.is_closed
    before, after = _topology(mesh), _topology(decimated)
    assert after == {**before, "open_edges": 0, "nonmanifold_edges": 0, "doubled_faces": 0}
    assert _relative_chamfer(decimated, mesh) < max_chamfer


def _gyroid_ball(points: torch.Tensor) -> torch.Tensor:
    """Density of a thickened gyroid sheet inside a ball: thin tunnels that naive edge collapse pinches."""
    x, y, z = (points * 6).unbind(-1)
    gyroid = torch.sin(x) * torch.cos(y) + torch.sin(y) * torch.cos(z) + torch.sin(z) * torch.cos(x)
    return torch.minimum(0.3 - gyroid.abs(), 0.8 - points.norm(dim=-1))


@pytest.fixture(scope="module")
def gyroid() -> Mesh:
    mesh = extract_isosurface(_gyroid_ball, 64, 0.0, 1.0)
    assert mesh.num_faces == 41772 and _topology(mesh)["pieces"] == 1 and mesh.is_closed
    return mesh


@pytest.mark.parametrize("target", [8000, 4000, 2000])
def test_decimation_keeps_marching_cubes_surface_closed(gyroid, target):
    # fast_simplification alone: 4, 7 and 3 edges shared by four faces, 4, 14 and 6 doubled faces.
    _check_decimated(gyroid, cleanup_mesh(gyroid, 0.0, target_faces=target), target, max_chamfer=0.006)


@pytest.fixture(scope="module")
def model():
    from monorecon.api import load_model

    return load_model()


@pytest.fixture(scope="module")
def reconstructed_mug(model) -> Mesh:
    import monorecon

    mesh = monorecon.reconstruct(EXAMPLES / "mug.png", model, mc_resolution=64)
    assert mesh.is_closed and _topology(mesh)["nonmanifold_edges"] == 0
    return mesh


@pytest.mark.parametrize("target", [3000, 1200, 600])
def test_decimation_keeps_reconstruction_closed(reconstructed_mug, target):
    """The user trial's case: the bundled model's mug at ``mc_resolution=64`` (6044 faces, two closed pieces)."""
    decimated = cleanup_mesh(reconstructed_mug, 0.0, target_faces=target)
    _check_decimated(reconstructed_mug, decimated, target, max_chamfer=0.006)
    assert decimated.vertex_colors is not None and decimated.vertex_colors.shape == (decimated.num_verts, 3)


def test_reconstruct_target_faces_closed(model):
    import monorecon

    mesh = monorecon.reconstruct(EXAMPLES / "mug.png", model, mc_resolution=64, target_faces=2000)
    assert abs(mesh.num_faces - 2000) <= 2000 * TOLERANCE and mesh.is_closed
    topology = _topology(mesh)
    assert topology["nonmanifold_edges"] == topology["doubled_faces"] == 0 and topology["pieces"] == 2


@pytest.mark.parametrize(("name", "target", "max_chamfer"), [("bunny", 800, 0.005), ("bunny", 200, 0.008)])
def test_decimation_of_real_closed_mesh(name, target, max_chamfer):
    mesh = load_mesh(SHARED_MESHES / f"{name}.ply")
    assert mesh.is_closed
    _check_decimated(mesh, cleanup_mesh(mesh, 0.0, target_faces=target), target, max_chamfer)


def test_decimation_does_not_tear_seams():
    """Vertices split at one position (suzanne's PLY) are welded first: the surface does not fall apart there."""
    mesh = load_mesh(SHARED_MESHES / "suzanne.ply")
    before = _topology(mesh)
    decimated = cleanup_mesh(mesh, 0.0, target_faces=800)
    after = _topology(decimated)
    # fast_simplification alone: 3 pieces -> 99, 84 open edges -> 1206, Chamfer 0.0098 of the diagonal (now 0.0035).
    assert after["pieces"] == before["pieces"] and after["open_edges"] <= before["open_edges"]
    assert abs(decimated.num_faces - 800) <= 800 * TOLERANCE
    assert _relative_chamfer(decimated, mesh) < 0.006
