"""Turntables (monorecon.video): where the cameras go and how the light shows the colours."""

import numpy as np
import torch
import trimesh

from monorecon.core.mesh import Mesh
from monorecon.video import turntable_from_mesh


def test_turntable_shows_facing_colours_unchanged_and_turns_towards_plus_x():
    tm = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    verts = torch.tensor(tm.vertices, dtype=torch.float32)
    colours = torch.tensor([0.2, 0.6, 0.8]).repeat(len(verts), 1)
    colours[verts[:, 0] > 0.2] = torch.tensor([0.9, 0.1, 0.1])  # the +X side
    mesh = Mesh(verts, torch.tensor(tm.faces), vertex_colors=colours)
    front, side = turntable_from_mesh(mesh, 4, size=64, progress=False)[:2]  # azimuths 0 and 90 deg
    # The sphere's point nearest the camera faces it: ambient + diffuse = 1, the colour itself (uint8 levels).
    np.testing.assert_allclose(front[32, 32], [51, 153, 204], atol=3)
    np.testing.assert_allclose(side[32, 32], [230, 26, 26], atol=3)  # the second frame looks from +X
    ratio = front[32, 8] / front[32, 32]  # oblique: darker, down to 0.45 at the outline (light at the eye)
    assert np.all((ratio > 0.45) & (ratio < 0.85)), ratio
