"""The WebGL mesh viewer (monorecon.viewer) of the web page and of the standalone HTML files: its payload decodes to
the mesh, and (where Chromium is installed) the standalone page draws what monorecon's own rasteriser draws from the
same camera and light.

The browser tests run headless Chromium with SwiftShader (software WebGL); they are skipped where no Chromium is
installed (Debian: ``apt-get install chromium``; ``.ci/run`` installs it).
"""

import base64
import html.parser
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import ChromiumRunner, screenshot
from monorecon import viewer
from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.mesh import Mesh
from monorecon.core.mesh_renderer import headlight, render_mesh
from monorecon.video import PREVIEW_LIGHTING

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def decode(text: str, dtype: str, columns: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(-1, columns)


def sphere(center=(0.0, 0.0, 0.0), radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    tm = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    verts = torch.tensor(tm.vertices, dtype=torch.float32) + torch.tensor(center)
    return verts, torch.tensor(tm.faces, dtype=torch.long)


def side_coloured_sphere(center=(0.0, 0.0, 0.0)) -> Mesh:
    """Unit sphere: red on +X, blue on -X, green on top (+Y), grey elsewhere (unlike the viewer's background)."""
    verts, faces = sphere(center)
    local = verts - torch.tensor(center)
    colours = torch.full_like(verts, 0.5)
    colours[local[:, 0] > 0.3] = torch.tensor(RED)
    colours[local[:, 0] < -0.3] = torch.tensor(BLUE)
    colours[local[:, 1] > 0.6] = torch.tensor(GREEN)
    return Mesh(verts, faces, vertex_colors=colours)


# --------------------------------------------------------------------------------------------------------------------
# Payload
# --------------------------------------------------------------------------------------------------------------------
def test_payload_decodes_to_the_mesh():
    mesh = side_coloured_sphere(center=(0.5, -0.25, 0.1))
    payload = viewer.viewer_payload(mesh)
    np.testing.assert_array_equal(decode(payload["positions"], "<f4", 3), mesh.verts.numpy())
    np.testing.assert_array_equal(decode(payload["indices"], "<u4", 3), mesh.faces.numpy())
    np.testing.assert_array_equal(decode(payload["colors"], "u1", 3), np.round(mesh.vertex_colors.numpy() * 255))
    # A sphere's normals point along the radius (an analytic reference, not the mesh's own normals).
    normals = decode(payload["normals"], "i1", 3) / 127.0
    radial = (mesh.verts - torch.tensor([0.5, -0.25, 0.1])).numpy()
    np.testing.assert_allclose(normals, radial / np.linalg.norm(radial, axis=1, keepdims=True), atol=0.02)
    np.testing.assert_allclose(payload["center"], [0.5, -0.25, 0.1], atol=1e-6)
    assert payload["radius"] == pytest.approx(3**0.5, rel=1e-6)  # half the diagonal of the (2, 2, 2) box
    assert payload["uvs"] is None and payload["texture_png"] is None
    json.dumps(payload)  # the server answers it as JSON


def test_payload_of_a_textured_mesh_carries_uvs_and_texture():
    verts, faces = sphere()
    uvs = torch.stack([verts[:, 0] * 0.5 + 0.5, verts[:, 1] * 0.5 + 0.5], dim=1)
    texture = torch.rand(8, 16, 3, generator=torch.Generator().manual_seed(0))
    payload = viewer.viewer_payload(Mesh(verts, faces, uvs=uvs, texture=texture))
    np.testing.assert_array_equal(decode(payload["uvs"], "<f4", 2), uvs.numpy())
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload["texture_png"]))))
    np.testing.assert_array_equal(image, np.round(texture.numpy() * 255))
    assert payload["colors"] is None


def test_payload_is_left_out_for_meshes_too_large_to_send(monkeypatch):
    mesh = side_coloured_sphere()
    monkeypatch.setattr(viewer, "VIEWER_MAX_FACES", mesh.num_faces - 1)
    assert viewer.viewer_payload(mesh) is None
    with pytest.raises(ValueError, match="too large"):
        viewer.viewer_html(mesh)
    monkeypatch.setattr(viewer, "VIEWER_MAX_FACES", mesh.num_faces)  # the cap itself is still sent
    assert viewer.viewer_payload(mesh) is not None


def test_standalone_page_embeds_the_payload_and_is_written_atomically(tmp_path):
    mesh = side_coloured_sphere()
    path = viewer.save_viewer_html(mesh, tmp_path / "viewer.html", title="a <sphere>")
    page = path.read_text()
    assert "<title>a &lt;sphere&gt;</title>" in page and "<script src" not in page and "http" not in page
    shown = page[page.index("viewer.show(") + len("viewer.show(") :]
    assert json.JSONDecoder().raw_decode(shown)[0] == viewer.viewer_payload(mesh)
    assert [p.name for p in tmp_path.iterdir()] == ["viewer.html"]  # no temporary file left

    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js to parse the page's script")
    (tmp_path / "page.js").write_text(page[page.index("<script>") + len("<script>") : page.index("</script>")])
    parsed = subprocess.run([node, "--check", str(tmp_path / "page.js")], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr


# --------------------------------------------------------------------------------------------------------------------
# Drawing, in headless Chromium
# --------------------------------------------------------------------------------------------------------------------
SIZE = 160


def draw_in_browser(chromium: ChromiumRunner, mesh: Mesh, tmp_path, notebook: bool = False) -> np.ndarray:
    """(SIZE, SIZE, 3) float screenshot of the standalone viewer page of ``mesh`` at its start view (``notebook``:
    of a page holding the :class:`viewer.MeshView` output, as a notebook shows it)."""
    page = tmp_path / "viewer.html"
    if notebook:
        view = viewer.MeshView(mesh, width=SIZE, height=SIZE)
        view.page = view.page.replace('<div id="caption">', '<div id="caption" hidden>')  # canvas only
        page.write_text(f'<!DOCTYPE html><body style="margin: 0; overflow: hidden">{view._repr_html_()}</body>')
    else:
        viewer.save_viewer_html(mesh, page)
        page.write_text(page.read_text().replace('<div id="caption">', '<div id="caption" hidden>'))
    return screenshot(chromium, page, SIZE, SIZE, tmp_path)


def reference_render(mesh: Mesh, payload: dict) -> tuple[np.ndarray, np.ndarray]:
    """The viewer's start view by monorecon's rasteriser: orbit camera at azimuth 0, elevation 15 around the box
    centre, fov 40 deg framing the bounding sphere, the turntables' headlight (ambient 0.45, diffuse 0.55)."""
    center = torch.tensor(payload["center"])
    distance = payload["radius"] / np.sin(np.radians(20))
    cameras = PerspectiveCameras(orbit_c2w(0.0, 15.0, distance, target=center), SIZE, SIZE, fov_y_deg=40.0)
    out = render_mesh(
        mesh.verts, mesh.faces, cameras, vertex_colors=mesh.vertex_colors, uvs=mesh.uvs, texture=mesh.texture,
        lights=headlight(cameras, **PREVIEW_LIGHTING), shading="lambert",
    )  # fmt: skip
    return out["rgb"][0].clamp(0, 1).numpy(), out["alpha"][0].numpy() > 0.5


def compare(shot: np.ndarray, reference: np.ndarray, covered: np.ndarray) -> None:
    drawn = np.abs(shot - 0.98).max(axis=-1) > 0.03  # the viewer clears to grey 0.98
    iou = (drawn & covered).sum() / (drawn | covered).sum()
    assert iou > 0.97, iou
    from scipy import ndimage

    inner = ndimage.binary_erosion(covered, iterations=2)  # away from the (antialiased) outline
    error = np.abs(shot - reference)[inner]
    assert error.mean() < 0.03 and np.quantile(error, 0.99) < 0.25, (error.mean(), np.quantile(error, 0.99))


def test_viewer_draws_the_front_view_as_the_rasteriser_does(chromium, tmp_path):
    mesh = side_coloured_sphere(center=(0.3, 0.2, -0.1))
    payload = viewer.viewer_payload(mesh)
    shot = draw_in_browser(chromium, mesh, tmp_path)
    reference, covered = reference_render(mesh, payload)
    compare(shot, reference, covered)
    # The world convention, read off the screenshot: +X (red) on the right, +Y (green) at the top.
    row, column = np.nonzero(covered)
    middle = shot[row.min() + (row.max() - row.min()) // 2]
    assert middle[column.max() - 8].argmax() == 0 and middle[column.min() + 8].argmax() == 2
    assert shot[row.min() + 6, (column.min() + column.max()) // 2].argmax() == 1


def test_notebook_view_draws_the_same_in_its_iframe(chromium, tmp_path):
    """Up to three screenshots: on a loaded machine headless Chromium sometimes shoots before the iframe's canvas has
    its final size (1 shot in ~20 with the test suite and other jobs running); a wrong drawing fails all three."""
    mesh = side_coloured_sphere(center=(0.3, 0.2, -0.1))
    reference, covered = reference_render(mesh, viewer.viewer_payload(mesh))
    for attempt in range(3):
        try:
            compare(draw_in_browser(chromium, mesh, tmp_path, notebook=True), reference, covered)
            return
        except AssertionError:
            if attempt == 2:
                raise


def test_notebook_view_embeds_the_standalone_page():
    mesh = side_coloured_sphere()
    output = viewer.MeshView(mesh, width=300, height=200, title='a "quoted" <mesh>')._repr_html_()
    attributes = {}

    class IframeParser(html.parser.HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "iframe":
                attributes.update(attrs)

    IframeParser().feed(output)
    assert attributes["srcdoc"] == viewer.viewer_html(mesh, 'a "quoted" <mesh>')  # unescaped by the parser
    assert (attributes["width"], attributes["height"], attributes["sandbox"]) == ("300", "200", "allow-scripts")
    with pytest.raises(ValueError, match=r"width must lie in \[64, 4096\], got 10"):
        viewer.MeshView(mesh, width=10)


def test_viewer_samples_the_texture_with_v_up(chromium, tmp_path):
    verts, faces = sphere()
    uvs = torch.stack([verts[:, 0] * 0.5 + 0.5, verts[:, 1] * 0.5 + 0.5], dim=1)  # v = 1 at the top of the sphere
    texture = torch.zeros(32, 32, 3)
    texture[:16, :, 0] = 1.0  # image rows 0-15 (the top, v > 0.5) red
    texture[16:, :, 2] = 1.0  # bottom blue
    mesh = Mesh(verts, faces, uvs=uvs, texture=texture)
    payload = viewer.viewer_payload(mesh)
    shot = draw_in_browser(chromium, mesh, tmp_path)
    reference, covered = reference_render(mesh, payload)
    compare(shot, reference, covered)
    row, column = np.nonzero(covered)
    centre_column = (column.min() + column.max()) // 2
    assert shot[row.min() + 10, centre_column].argmax() == 0 and shot[row.max() - 10, centre_column].argmax() == 2
