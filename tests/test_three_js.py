"""Our GLB files as three.js shows them (its GLTFLoader, the loader of most web apps), drawn by headless Chromium:
seen from the front (a camera on +Z looking down -Z, +Y up) a quad of four coloured quarters shows each quarter in
its place and in the colour it was given, for vertex colours (glTF's linear ``COLOR_0``) and for a texture."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import screenshot
from monorecon.core.mesh import Mesh
from monorecon.io import save_mesh

THREE = Path(__file__).resolve().parents[1] / "tools" / "gltf" / "node_modules" / "three"
SIDE = 64
QUARTERS = {  # (column, row) of the quarter in the image -> its display colour
    (0, 0): (0.9, 0.1, 0.1),
    (1, 0): (0.1, 0.8, 0.2),
    (0, 1): (0.2, 0.3, 0.9),
    (1, 1): (0.5, 0.5, 0.5),
}


def _quad(textured: bool) -> Mesh:
    """The square [-1, 1]^2 at z = 0 facing +Z, a separate quad per quarter: vertex colours, or UVs into a 4 x 4
    texture whose 2 x 2 blocks hold the colours (row 0 of the image at the top, as the quad shows it)."""
    verts, faces, colors = [], [], []
    for (column, row), color in QUARTERS.items():
        x0, y0 = column - 1.0, -float(row)
        base = len(verts)
        verts += [[x0, y0, 0.0], [x0 + 1, y0, 0.0], [x0 + 1, y0 + 1, 0.0], [x0, y0 + 1, 0.0]]
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
        colors += [color] * 4
    verts_t = torch.tensor(verts)
    if not textured:
        return Mesh(verts_t, torch.tensor(faces), vertex_colors=torch.tensor(colors))
    texture = torch.zeros(4, 4, 3)
    for (column, row), color in QUARTERS.items():
        texture[2 * row : 2 * row + 2, 2 * column : 2 * column + 2] = torch.tensor(color)
    return Mesh(verts_t, torch.tensor(faces), uvs=(verts_t[:, :2] + 1) / 2, texture=texture)


def _page(glb: bytes, folder: Path) -> Path:
    three = THREE.as_uri()
    imports = {"three": f"{three}/build/three.module.js", "three/addons/": f"{three}/examples/jsm/"}
    page = folder / "three.html"
    page.write_text(f"""<!doctype html><html><body style="margin:0;background:#000">
<script type="importmap">{json.dumps({"imports": imports})}</script>
<script type="module">
import * as THREE from "three";
import {{ GLTFLoader }} from "three/addons/loaders/GLTFLoader.js";
const renderer = new THREE.WebGLRenderer({{ antialias: false, preserveDrawingBuffer: true }});
renderer.setSize({SIDE}, {SIDE});
document.body.appendChild(renderer.domElement);
const scene = new THREE.Scene();
const camera = new THREE.OrthographicCamera(-1, 1, 1, -1, 0.1, 10);
camera.position.set(0, 0, 3);
const glb = Uint8Array.from(atob("{base64.b64encode(glb).decode()}"), (c) => c.charCodeAt(0));
new GLTFLoader().parse(glb.buffer, "", (gltf) => {{ scene.add(gltf.scene); renderer.render(scene, camera); }});
</script></body></html>""")
    return page


@pytest.mark.parametrize("textured", [False, True], ids=["vertex colours", "texture"])
def test_three_js_shows_the_front_upright_in_the_given_colours(chromium, tmp_path, textured):
    if not (THREE / "build" / "three.module.js").is_file():
        pytest.skip("three.js not installed: run `npm ci --prefix tools/gltf`")
    # Unlit (KHR_materials_unlit): three.js shows the base colour itself, with no light to scale it.
    save_mesh(_quad(textured), tmp_path / "quad.glb", unlit=True)
    page = _page((tmp_path / "quad.glb").read_bytes(), tmp_path)
    image = screenshot(chromium, page, SIDE, SIDE, tmp_path, ("--allow-file-access-from-files",))
    for (column, row), color in QUARTERS.items():
        centre = image[(2 * row + 1) * SIDE // 4, (2 * column + 1) * SIDE // 4]
        np.testing.assert_allclose(centre, color, atol=1.5 / 255, err_msg=f"quarter {column, row}")
