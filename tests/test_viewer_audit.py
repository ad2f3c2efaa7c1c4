"""Audit of monorecon.viewer: the payload against meshes whose answers are known by construction, the page's text,
and three headless-Chromium screenshots of flat, axis-aligned meshes whose colour at each screen location follows
from the documented conventions alone (orbit camera about the bounding-box centre, start view in front (+Z) 15 deg
up with +Y up, vertical field of view 40 deg framing the bounding sphere, a light at the eye: ambient 0.45 plus
diffuse 0.55, no library rasteriser involved): the start view on a wide canvas, a textured quad in a WebGL-1-only
browser after a reset by double-click, and a top view reached by dragging and zooming.
"""

import base64
import re

import numpy as np
import pytest
import torch

from conftest import ChromiumRunner, screenshot
from monorecon import viewer
from monorecon.core.mesh import Mesh

BACKGROUND = 0.98  # the viewer's clear colour
GREY = 0.8  # the viewer's colour for a mesh without colours
RED, GREEN, BLUE, YELLOW = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)


def decode(text: str, dtype: str, columns: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(-1, columns)


# --------------------------------------------------------------------------------------------------------------------
# Meshes built from separate flat quads (no shared positions, so each quad's vertex normals are its own normal)
# --------------------------------------------------------------------------------------------------------------------
def quads(corners: list[list[tuple[float, float, float]]], colours=None) -> Mesh:
    """One quad per entry (four corners counter-clockwise from outside), two triangles each."""
    verts = torch.tensor([c for quad in corners for c in quad], dtype=torch.float32)
    faces = torch.tensor([[4 * q, 4 * q + 1, 4 * q + 2] for q in range(len(corners))] +
                         [[4 * q, 4 * q + 2, 4 * q + 3] for q in range(len(corners))])  # fmt: skip
    vertex_colors = None
    if colours is not None:
        vertex_colors = torch.tensor([c for c in colours for _ in range(4)], dtype=torch.float32)
    return Mesh(verts, faces, vertex_colors=vertex_colors)


def box_faces(inset: float = 0.98) -> dict[str, list[tuple[float, float, float]]]:
    """The six faces of the box [-1, 1]^3, each shrunk about its centre by ``inset`` (so no two share a position)."""
    s = inset
    return {
        "+z": [(-s, -s, 1), (s, -s, 1), (s, s, 1), (-s, s, 1)],
        "-z": [(s, -s, -1), (-s, -s, -1), (-s, s, -1), (s, s, -1)],
        "+x": [(1, -s, s), (1, -s, -s), (1, s, -s), (1, s, s)],
        "-x": [(-1, -s, -s), (-1, -s, s), (-1, s, s), (-1, s, -s)],
        "-y": [(-s, -1, -s), (s, -1, -s), (s, -1, s), (-s, -1, s)],
        # The top in two halves: x > 0 and x < 0.
        "+y+x": [(0, 1, s), (s, 1, s), (s, 1, -s), (0, 1, -s)],
        "+y-x": [(-s, 1, s), (0, 1, s), (0, 1, -s), (-s, 1, -s)],
    }


def project(points, center, radius, azimuth, elevation, zoom, width, height) -> np.ndarray:
    """(N, 2) pixel (column, row) of world points for the documented orbit camera, by an independent pinhole model."""
    center = np.asarray(center, dtype=np.float64)
    distance = zoom * radius / np.sin(np.radians(20))
    az, el = np.radians(azimuth), np.radians(elevation)
    eye = center + distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    back = (eye - center) / np.linalg.norm(eye - center)
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    relative = np.asarray(points, dtype=np.float64) - eye
    depth = -relative @ back
    f = 1 / np.tan(np.radians(20))
    x = f * (relative @ right) / depth / (width / height)
    y = f * (relative @ up) / depth
    return np.stack([(x + 1) / 2 * width, (1 - y) / 2 * height], axis=1)


def brightness(normal, azimuth: float, elevation: float) -> float:
    """The headlight's factor on a surface of unit ``normal``: ambient 0.45 + diffuse 0.55 x |cos(normal, eye)|."""
    az, el = np.radians(azimuth), np.radians(elevation)
    towards_eye = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    return 0.45 + 0.55 * abs(float(np.dot(normal, towards_eye)))


def at(shot: np.ndarray, pixel) -> np.ndarray:
    """Median colour of the 3 x 3 pixels around (column, row)."""
    column, row = int(np.rint(pixel[0])), int(np.rint(pixel[1]))
    return np.median(shot[row - 1 : row + 2, column - 1 : column + 2].reshape(-1, 3), axis=0)


# --------------------------------------------------------------------------------------------------------------------
# Payload and page (no browser)
# --------------------------------------------------------------------------------------------------------------------
def test_payload_frames_the_bounding_box_not_the_vertex_mean():
    # A lopsided mesh: many vertices near one corner, so the vertex mean is far from the box centre.
    rng = np.random.default_rng(0)
    verts = np.concatenate([rng.uniform(0.0, 0.1, (60, 3)), [[2.0, -1.0, 4.0], [-1.0, 3.0, -2.0]]])
    faces = rng.integers(0, len(verts), (40, 3))
    faces[0] = [60, 61, 0]
    mesh = Mesh(torch.tensor(verts, dtype=torch.float32), torch.tensor(faces))
    payload = viewer.viewer_payload(mesh)
    np.testing.assert_allclose(payload["center"], [0.5, 1.0, 1.0], atol=1e-6)  # box [-1, 2] x [-1, 3] x [-2, 4]
    assert payload["radius"] == pytest.approx(np.sqrt(3**2 + 4**2 + 6**2) / 2, rel=1e-6)
    np.testing.assert_array_equal(decode(payload["positions"], "<f4", 3), verts.astype(np.float32))
    np.testing.assert_array_equal(decode(payload["indices"], "<u4", 3), faces)
    assert payload["colors"] is None


def test_payload_normals_are_the_nearest_int8():
    # A flat quad with normal (0, -0.6, 0.8): x 127 is (0, -76.2, 101.6), so the nearest int8 is (0, -76, 102).
    mesh = quads([[(-1, -0.8, -0.6), (1, -0.8, -0.6), (1, 0.8, 0.6), (-1, 0.8, 0.6)]])
    normals = decode(viewer.viewer_payload(mesh)["normals"], "i1", 3)
    np.testing.assert_array_equal(normals, np.tile([0, -76, 102], (4, 1)))


def test_page_caption_counts_vertices_and_faces():
    mesh = quads(list(box_faces().values()))  # 28 vertices, 14 faces
    caption = re.search(r'<div id="caption">([^<]*)</div>', viewer.viewer_html(mesh)).group(1)
    assert caption.startswith("28 vertices, 14 faces:"), caption


def test_saved_page_is_titled_by_the_file_name_and_a_failed_write_keeps_the_old_file(tmp_path):
    mesh = quads(list(box_faces().values()))
    page = viewer.save_viewer_html(mesh, tmp_path / "my mesh.html").read_text()
    assert "<title>my mesh</title>" in page
    # A title that cannot be encoded fails the write: the file there before is left whole, no temporary file.
    path = tmp_path / "old.html"
    path.write_text("old page")
    with pytest.raises(UnicodeError):
        viewer.save_viewer_html(mesh, path, title="bad \ud800 title")
    assert path.read_text() == "old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my mesh.html", "old.html"]


def test_notebook_view_checks_its_height():
    mesh = quads(list(box_faces().values()))
    for height in (63, 4097):
        with pytest.raises(ValueError, match="height must lie in"):
            viewer.MeshView(mesh, height=height)
    assert 'height="64"' in viewer.MeshView(mesh, width=4096, height=64)._repr_html_()


# --------------------------------------------------------------------------------------------------------------------
# Screenshots in headless Chromium
# --------------------------------------------------------------------------------------------------------------------
WEBGL1_ONLY = """<script>
const originalGetContext = HTMLCanvasElement.prototype.getContext;
HTMLCanvasElement.prototype.getContext = function (type, options) {
  return type === "webgl2" ? null : originalGetContext.call(this, type, options);
};
</script>
"""

EVENTS = """<script>
const canvas = document.getElementById("viewer");
const pointer = (type, x, y) => canvas.dispatchEvent(
  new PointerEvent(type, { clientX: x, clientY: y, pointerId: 1, isPrimary: true, bubbles: true }));
%s
</script>
"""

# Drag right by 180 px and down by 1000 px (the elevation stops short of the pole), a stray move after the button is
# released, then the wheel turned towards the user by 693 (zoom e^0.693 = 2: twice as far).
DRAG_AND_ZOOM = """
pointer("pointerdown", 20, 20); pointer("pointermove", 200, 20); pointer("pointermove", 200, 1020);
pointer("pointerup", 200, 1020); pointer("pointermove", 0, 400);
canvas.dispatchEvent(new WheelEvent("wheel", { deltaY: 693, bubbles: true, cancelable: true }));
"""
DRAGGED = {"azimuth": -90.0, "elevation": 89.0, "zoom": np.exp(0.693)}  # drag right turns the mesh right

RESET = DRAG_AND_ZOOM + 'canvas.dispatchEvent(new MouseEvent("dblclick", { bubbles: true }));'
START = {"azimuth": 0.0, "elevation": 15.0, "zoom": 1.0}


def shoot_viewer(chromium: ChromiumRunner, mesh: Mesh, folder, width: int, height: int, before="", after="") -> dict:
    """Screenshot of the standalone page of ``mesh`` (caption hidden) with ``before`` inserted ahead of its script
    and ``after`` behind it, plus the payload's framing as the test reads it (box centre and half diagonal)."""
    folder.mkdir()
    page = folder / "viewer.html"
    viewer.save_viewer_html(mesh, page)
    text = page.read_text().replace('<div id="caption">', '<div id="caption" hidden>')
    text = text.replace("<script>", before + "<script>", 1).replace("</body>", after + "</body>")
    page.write_text(text)
    verts = mesh.verts.numpy().astype(np.float64)
    low, high = verts.min(axis=0), verts.max(axis=0)
    return {
        "image": screenshot(chromium, page, width, height, folder),
        "frame": {
            "center": (low + high) / 2,
            "radius": np.linalg.norm(high - low) / 2,
            "width": width,
            "height": height,
        },
    }


@pytest.fixture(scope="module")
def shots(chromium, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("viewer_audit")
    faces = box_faces()
    grey = (0.5, 0.5, 0.5)
    colours = {"+z": RED, "-z": grey, "+x": grey, "-x": grey, "-y": grey, "+y+x": GREEN, "+y-x": BLUE}
    coloured_box = quads(list(faces.values()), [colours[name] for name in faces])

    # A quad in the z = 0 plane, uv = (x, y) mapped to [0, 1]; a 6 x 10 (not a power of two) texture whose image
    # quadrants are red (top left), green (top right), blue (bottom left), yellow (bottom right).
    quad = quads([[(-1, -1, 0), (1, -1, 0), (1, 1, 0), (-1, 1, 0)]])
    texture = torch.zeros(10, 6, 3)
    texture[:5, :3], texture[:5, 3:] = torch.tensor(RED), torch.tensor(GREEN)
    texture[5:, :3], texture[5:, 3:] = torch.tensor(BLUE), torch.tensor(YELLOW)
    textured = Mesh(quad.verts, quad.faces, uvs=(quad.verts[:, :2] + 1) / 2, texture=texture)

    # An uncoloured box with a flap beside its top on the +X side.
    flap = [[(1.1, 1, 0.5), (1.9, 1, 0.5), (1.9, 1, -0.5), (1.1, 1, -0.5)]]
    flapped = quads(list(faces.values()) + flap)
    return {
        "start": shoot_viewer(chromium, coloured_box, folder / "start", 300, 200),
        "textured": shoot_viewer(chromium, textured, folder / "textured", 200, 160, WEBGL1_ONLY, EVENTS % RESET),
        "dragged": shoot_viewer(chromium, flapped, folder / "dragged", 160, 160, after=EVENTS % DRAG_AND_ZOOM),
    }


def test_start_view_is_in_front_and_above_on_a_wide_canvas(shots):
    """Front (+Z, red) face and top face, lit by the headlight as the documented view has them; +X to the right of
    the top; the box as wide as it is tall (the field of view is vertical), background beside and above it."""
    image, frame = shots["start"]["image"], shots["start"]["frame"]

    def pixel(point):
        return project([point], **frame, **START)[0]

    front, top = brightness([0, 0, 1], 0.0, 15.0), brightness([0, 1, 0], 0.0, 15.0)
    assert top == pytest.approx(0.5923, abs=1e-4) and front == pytest.approx(0.9813, abs=1e-4)
    np.testing.assert_allclose(at(image, pixel((0, 0, 1))), np.multiply(RED, front), atol=0.025)
    np.testing.assert_allclose(at(image, pixel((0.5, 0.5, 1))), np.multiply(RED, front), atol=0.025)
    np.testing.assert_allclose(at(image, pixel((0.5, 1, 0))), np.multiply(GREEN, top), atol=0.025)
    np.testing.assert_allclose(at(image, pixel((-0.5, 1, 0))), np.multiply(BLUE, top), atol=0.025)
    # Just outside the box: left and right of the front face at mid height, above the far edge of the top.
    for outside in ((1.25, 0, 1), (-1.25, 0, 1), (0, 1.4, -1)):
        np.testing.assert_allclose(at(image, pixel(outside)), BACKGROUND, atol=0.02, err_msg=str(outside))
    # The front face's width in pixels at mid height is the projected one (no stretch on a wide canvas).
    left, right = project([(-0.98, 0, 1), (0.98, 0, 1)], **frame, **START)
    row = image[int(np.rint(left[1]))]
    red = np.nonzero(row[:, 0] - row[:, 2] > 0.5)[0]
    assert abs((red.max() - red.min() + 1) - (right[0] - left[0])) <= 3, (red.min(), red.max(), left, right)


def test_texture_is_sampled_u_right_v_up_in_webgl1_after_a_reset(shots):
    """WebGL 1 only (no webgl2 context), a non-power-of-two texture; drag and zoom, then a double-click back to the
    start view: the image's top-left quadrant at the quad's top left, and so on."""
    image, frame = shots["textured"]["image"], shots["textured"]["frame"]
    factor = brightness([0, 0, 1], 0.0, 15.0)
    for point, colour in (((-0.5, 0.5, 0), RED), ((0.5, 0.5, 0), GREEN), ((-0.5, -0.5, 0), BLUE),
                          ((0.5, -0.5, 0), YELLOW)):  # fmt: skip
        pixel = project([point], **frame, **START)[0]
        np.testing.assert_allclose(at(image, pixel), np.multiply(colour, factor), atol=0.03, err_msg=str(point))
    for outside in ((1.3, 0, 0), (-1.3, 0, 0), (0, 1.25, 0), (0, -1.25, 0)):
        pixel = project([outside], **frame, **START)[0]
        np.testing.assert_allclose(at(image, pixel), BACKGROUND, atol=0.02, err_msg=str(outside))


def test_dragging_right_and_down_then_the_wheel_shows_the_top_from_twice_as_far(shots):
    """Dragging turns the mesh with the pointer: 180 px right brings its -X side to the front (azimuth -90), 1000 px
    down looks at it from above (elevation held at 89), the wheel towards the user doubles the distance; the flap on
    the +X side then lies above the box on screen. An uncoloured mesh is drawn light grey."""
    image, frame = shots["dragged"]["image"], shots["dragged"]["frame"]
    top = GREY * brightness([0, 1, 0], -90.0, 89.0)

    def pixel(point, **view):
        return project([point], **frame, **(DRAGGED | view))[0]

    np.testing.assert_allclose(at(image, pixel((0, 1, 0))), top, atol=0.025)
    np.testing.assert_allclose(at(image, pixel((1.5, 1, 0))), top, atol=0.025)  # the flap
    # Beside the flap (narrower in z than the box): background; the spot turned half a turn about the view's centre
    # (the box's top): the box. The view from the other side, or from below, shows them the other way round.
    np.testing.assert_allclose(at(image, pixel((1.5, 1, 0.8))), BACKGROUND, atol=0.02)
    np.testing.assert_allclose(at(image, pixel((-0.6, 1, -0.8))), top, atol=0.025)
    # Where the box's top corner would lie from 7/8 of that distance: just outside, background.
    corner = pixel((-0.98, 1, 0.98), zoom=DRAGGED["zoom"] * 7 / 8)
    assert (corner - pixel((-0.98, 1, 0.98)) > 3).all()
    np.testing.assert_allclose(at(image, corner), BACKGROUND, atol=0.02)
