"""Web page (monorecon.webui): the page loads offline, its form matches the API and posts to it, previews decode."""

import base64
import io
import json
import re
import shutil
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser

import numpy as np
import pygltflib
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from monorecon.core.carving import SilhouetteFill
from monorecon.io.images import png_bytes
from monorecon.overlay import OUTLINE_COLOUR
from monorecon.server import create_app
from monorecon.webui import PREVIEW_FPS, gif_bytes
from test_server import SMALL_SETTINGS, ConfiguredStub, StubModel, assert_one_line_error, object_png, object_share


class FormParser(HTMLParser):
    """Collects the page's forms with their controls, and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[str] = []
        self._select: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        self.links += [attributes[key] for key in ("src", "href") if key in attributes]
        if tag == "form":
            self.forms.append({**attributes, "controls": {}})
        elif tag in ("input", "select") and self.forms:
            control = {"tag": tag, **attributes, "options": []}
            self.forms[-1]["controls"][attributes["name"]] = control
            self._select = control if tag == "select" else None
        elif tag == "option" and self._select is not None:
            self._select["options"].append(attributes["value"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


@pytest.fixture(scope="module")
def app():
    return create_app(StubModel(), settings=SMALL_SETTINGS)


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


@pytest.fixture(scope="module")
def form(client) -> dict:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    parser = FormParser()
    parser.feed(response.text)
    (form,) = parser.forms
    form["links"] = parser.links
    return form


def multipart_properties(client: TestClient, path: str) -> dict:
    schema = client.get("/openapi.json").json()
    body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    return schema["components"]["schemas"][body["$ref"].split("/")[-1]]["properties"]


def browser_submission(form: dict) -> dict[str, str]:
    """The fields a browser sends for the untouched form: each input's value, each select's first option."""
    data = {}
    for name, control in form["controls"].items():
        if control["tag"] == "select":
            data[name] = control["options"][0]
        elif control.get("type") != "file":
            data[name] = control["value"]
    return data


def test_form_posts_multipart_to_the_api(form):
    assert form["action"] == "/reconstruct"
    assert form["method"] == "post" and form["enctype"] == "multipart/form-data"
    assert form["data-preview"] == "/preview"
    assert form["controls"]["image"]["type"] == "file"


def test_form_fields_are_the_api_fields(client, form):
    for path in ("/reconstruct", "/preview"):
        properties = multipart_properties(client, path)
        assert set(form["controls"]) == set(properties), path
    properties = multipart_properties(client, "/reconstruct")
    assert form["controls"]["format"]["options"] == properties["format"]["enum"]
    assert int(form["controls"]["mc_resolution"]["max"]) == properties["mc_resolution"]["maximum"] == 64
    assert int(form["controls"]["texture_resolution"]["max"]) == properties["texture_resolution"]["maximum"]


def test_fill_select_defaults_to_the_model_setting(form):
    from monorecon.webui import render_page

    assert form["controls"]["fill"]["options"] == ["false", "true"]  # the stub model does not fill
    parser = FormParser()
    parser.feed(render_page(SMALL_SETTINGS, {"silhouette_fill": True}))
    assert parser.forms[0]["controls"]["fill"]["options"] == ["true", "false"]


def test_page_defaults_are_the_models_own_settings():
    """A model whose config differs from the global defaults (25, 0.85, no fill): the page shows its threshold,
    framing and fill, and the untouched form sends them."""
    model = ConfiguredStub()
    client = TestClient(create_app(model, settings=SMALL_SETTINGS))
    parser = FormParser()
    parser.feed(client.get("/").text)
    (form,) = parser.forms
    controls = form["controls"]
    assert float(controls["threshold"]["value"]) == 3.5 and float(controls["foreground_ratio"]["value"]) == 0.6
    assert controls["fill"]["options"][0] == "true"
    files = {"image": ("duck.png", object_png(), "image/png")}
    response = client.post(form["action"], data={**browser_submission(form), "mc_resolution": "16"}, files=files)
    assert response.status_code == 200, response.text
    assert model.extract_calls[-1]["threshold"] == 3.5 and isinstance(model.weights[-1], SilhouetteFill)
    assert abs(object_share(model.images[-1]) - 0.6) < 0.01


@pytest.mark.parametrize("unlit", [False, True])
def test_preview_mesh_is_unlit_when_asked(client, form, unlit):
    """The preview's download (GLB) carries the unlit material exactly when the form asks for it."""
    data = {**browser_submission(form), "mc_resolution": "16", "unlit": "true" if unlit else "false"}
    response = client.post(form["data-preview"], data=data, files={"image": ("duck.png", object_png(), "image/png")})
    assert response.status_code == 200, response.text
    (material,) = pygltflib.GLTF2.load_from_bytes(base64.b64decode(response.json()["mesh_base64"])).materials
    assert (material.extensions or None) == ({"KHR_materials_unlit": {}} if unlit else None)


def test_page_script_parses(client, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js to parse the page's script")
    page = client.get("/").text
    script = page[page.index("<script>") + len("<script>") : page.index("</script>")]
    (tmp_path / "page.js").write_text(script)
    result = subprocess.run([node, "--check", str(tmp_path / "page.js")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _form_after_script(chromium, client, tmp_path, script: str) -> tuple[dict, str]:
    """The page's form, and its DOM, as headless Chromium leaves them after ``script`` (ending ``</body>``) ran."""
    page = tmp_path / "page.html"
    page.write_text(client.get("/").text.replace("</body>", script))
    dom = chromium(["--dump-dom", page.as_uri()], tmp_path)
    parser = FormParser()
    parser.feed(dom)
    (form,) = parser.forms
    return form, dom


@pytest.mark.parametrize(
    ("mesh_format", "colours", "bake_enabled", "size_enabled", "material_enabled"),
    [("glb", "false", True, False, True), ("glb", "true", True, True, True), ("usdz", "false", True, True, True),
     ("obj", "true", True, True, False), ("ply", "true", False, False, False), ("stl", "true", False, False, False)],
)  # fmt: skip
def test_texture_controls_follow_the_format(
    chromium, client, tmp_path, mesh_format, colours, bake_enabled, size_enabled, material_enabled
):
    """In headless Chromium: the page's script enables the colours select, the texture size and the material (lit /
    unlit: GLB and USDZ only) as the format allows."""
    choose = f"""<script>
for (const [id, value] of [["bake_texture", "{colours}"], ["format", "{mesh_format}"]]) {{
  const select = document.getElementById(id);
  select.value = value;
  select.dispatchEvent(new Event("change"));
}}
</script></body>"""
    form, _ = _form_after_script(chromium, client, tmp_path, choose)
    assert ("disabled" not in form["controls"]["bake_texture"]) == bake_enabled
    assert ("disabled" not in form["controls"]["texture_resolution"]) == size_enabled
    assert ("disabled" not in form["controls"]["unlit"]) == material_enabled
    assert ("disabled" not in form["controls"]["project_input"]) == (mesh_format != "stl")  # STL has no colours


@pytest.mark.parametrize("background", ["true", "false"])
def test_the_object_size_is_disabled_when_the_image_is_kept_as_it_is(chromium, client, tmp_path, background):
    """In headless Chromium: "keep the image as it is" disables (and so leaves out of the request) the object size,
    which frames what background removal finds; the server refuses the pair."""
    choose = f"""<script>
const select = document.getElementById("remove_background");
select.value = "{background}";
select.dispatchEvent(new Event("change"));
document.body.dataset.sent = [...new FormData(document.getElementById("reconstruct-form")).keys()].join(" ");
</script></body>"""
    form, dom = _form_after_script(chromium, client, tmp_path, choose)
    assert ("disabled" in form["controls"]["foreground_ratio"]) == (background == "false")
    sent = re.search(r'data-sent="([^"]*)"', dom).group(1).split()
    assert ("foreground_ratio" in sent) == (background == "true") and "remove_background" in sent


def test_a_new_run_hides_the_previous_result_and_carving_off_disables_the_fill(chromium, client, tmp_path):
    """In headless Chromium: with a result on show, a submission that fails (from a file:// page the request cannot
    be sent) shows its error alone; carving off disables the fill select."""
    act = """<script>
document.getElementById("result").hidden = false;
const carving = document.getElementById("carve");
carving.value = "false";
carving.dispatchEvent(new Event("change"));
document.getElementById("reconstruct-form").dispatchEvent(new Event("submit", { cancelable: true }));
</script></body>"""
    (tmp_path / "page.html").write_text(client.get("/").text.replace("</body>", act))
    dom = chromium(["--virtual-time-budget=10000", "--dump-dom", (tmp_path / "page.html").as_uri()], tmp_path)
    assert re.search(r'<div id="result" hidden', dom), "the old result is still shown"
    assert re.search(r'<div id="error" role="alert">[^<]+</div>', dom), "no error shown"
    parser = FormParser()
    parser.feed(dom)
    assert "disabled" in parser.forms[0]["controls"]["fill"]


def test_page_needs_nothing_from_outside(form, client):
    page = client.get("/").text
    assert all(not link.startswith(("http:", "https:", "//")) for link in form["links"])
    assert "<script src" not in page and "@import" not in page


def test_page_and_health_answer_head_requests(client):
    for path in ("/", "/health"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b""


@contextmanager
def live_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    try:
        (port,) = {socket.getsockname()[1] for listener in server.servers for socket in listener.sockets}
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.parametrize(("path", "drawn"), [("/docs", 'class="opblock-summary-path"'), ("/redoc", "api-content")])
def test_api_documentation_draws_the_schema_offline(chromium, app, client, tmp_path, path, drawn):
    """Swagger UI and ReDoc come from the app itself: their scripts draw the operations with no internet."""
    page = client.get(path).text
    assert "http:" not in page and "https:" not in page
    with live_server(app) as base:
        dom = chromium(["--virtual-time-budget=15000", "--dump-dom", base + path], tmp_path)
    assert drawn in dom and "/reconstruct" in dom and "/preview" in dom


def test_default_form_submission_downloads_a_mesh(client, form):
    response = client.post(
        form["action"], data=browser_submission(form), files={"image": ("duck.png", object_png(), "image/png")}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="duck.glb"'
    assert response.content[:4] == b"glTF"


def test_preview_returns_processed_input_turntable_and_mesh(client, form):
    response = client.post(
        form["data-preview"], data=browser_submission(form), files={"image": ("duck.png", object_png(), "image/png")}
    )
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["filename"] == "duck.glb" and payload["media_type"] == "model/gltf-binary"
    assert base64.b64decode(payload["mesh_base64"])[:4] == b"glTF"
    assert payload["faces"] == 80 and payload["vertices"] == 42 and payload["textured"] is False
    assert list(payload["timings"])[:2] == ["preprocess", "encode"] and list(payload["timings"])[-2:] == [
        "turntable",
        "write",
    ]
    assert all(seconds >= 0 for seconds in payload["timings"].values())
    assert sum(payload["timings"].values()) <= payload["seconds"] + 0.01  # rounded to 2 and 3 decimals
    viewer = payload["viewer"]  # the 3-D view's arrays (decoded in detail by test_viewer.py)
    assert len(base64.b64decode(viewer["positions"])) == 42 * 3 * 4
    assert len(base64.b64decode(viewer["indices"])) == 80 * 3 * 4

    processed = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload["input_png_base64"]))))
    assert processed.shape == (512, 512, 3)
    np.testing.assert_array_equal(processed[0, 0], [128, 128, 128])  # grey composite background
    np.testing.assert_array_equal(processed[256, 256], [255, 0, 0])  # the red object

    # The mesh over the processed input by the input camera: the stub's sphere (radius 0.5 at the origin, seen from
    # 1.9 with a 40 deg fov) has its outline, in green, on the circle of radius f r / sqrt(D^2 - r^2) about the centre
    # (its 80 faces make a polygon inside that circle).
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload["overlay_png_base64"]))))
    assert overlay.shape == (256, 256, 3) and "overlay" in payload["timings"]
    rows, cols = np.nonzero(np.all(overlay == np.round(np.asarray(OUTLINE_COLOUR) * 255), axis=-1))
    radius = np.hypot(cols + 0.5 - 128, rows + 0.5 - 128)
    rim = 128 / np.tan(np.radians(20)) * 0.5 / np.sqrt(1.9**2 - 0.5**2)
    assert len(radius) > 4 * rim and radius.max() < rim + 1 and radius.min() > 0.85 * rim

    gif = Image.open(io.BytesIO(base64.b64decode(payload["turntable_gif_base64"])))
    assert gif.format == "GIF" and gif.size == (48, 48)
    # The stub's sphere looks the same from every side and GIF encoding merges equal frames: count by duration.
    durations = []
    for index in range(gif.n_frames):
        gif.seek(index)
        durations.append(gif.info["duration"])
    assert sum(durations) == SMALL_SETTINGS.preview_frames * round(1000 / PREVIEW_FPS)
    frame = np.asarray(gif.convert("RGB")).astype(int)
    assert np.abs(frame[24, 24] - frame[0, 0]).sum() > 60  # the sphere covers the centre, not the corner


def test_preview_errors_are_one_line(client, form):
    files = {"image": ("notes.txt", b"not an image", "text/plain")}
    assert "notes.txt" in assert_one_line_error(client.post(form["data-preview"], files=files), 400)


def test_ui_can_be_left_out():
    client = TestClient(create_app(StubModel(), settings=SMALL_SETTINGS, ui=False))
    assert client.get("/").status_code == 404
    assert client.post("/preview").status_code == 404
    assert client.get("/health").status_code == 200


def test_gif_and_png_encoders_round_trip():
    rng = np.random.default_rng(0)
    frames = [np.full((16, 20, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    gif = Image.open(io.BytesIO(gif_bytes(frames, fps=10)))
    assert gif.n_frames == 3 and gif.size == (20, 16) and gif.info["duration"] == 100 and gif.info["loop"] == 0
    for index, value in enumerate((0, 128, 255)):
        gif.seek(index)
        np.testing.assert_array_equal(np.asarray(gif.convert("RGB"))[0, 0], [value] * 3)
    levels = rng.integers(0, 256, (5, 7, 4)).astype(np.float32) / 255.0
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(levels))))
    np.testing.assert_array_equal(decoded, np.round(levels * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        gif_bytes([])


def test_form_ranges_and_defaults_are_the_schemas(client, form):
    """Each number field's min/max/default and each select's first option (what an untouched form sends) match the
    OpenAPI schema of /reconstruct, and the documented ranges (docs/server.md)."""
    properties = multipart_properties(client, "/reconstruct")
    controls = form["controls"]
    for name, control in controls.items():
        (schema,) = [part for part in properties[name].get("anyOf", [properties[name]]) if part["type"] != "null"]
        schema = {**schema, "default": properties[name].get("default")}
        if control["tag"] == "select":
            if schema.get("default") is not None:
                assert control["options"][0] == str(schema["default"]).lower(), name
            continue
        if control.get("type") == "file":
            continue
        if "exclusiveMinimum" in schema:  # an HTML min is inclusive: the smallest positive step the page allows
            assert 0 < float(control["min"]) - schema["exclusiveMinimum"] <= 1e-6, name
        else:
            assert float(control["min"]) == schema.get("minimum") if "min" in control else "minimum" not in schema, name
        assert float(control["max"]) == schema.get("maximum") if "max" in control else "maximum" not in schema, name
        if schema.get("default") is not None:
            assert float(control["value"]) == schema["default"], name
    documented = {"mc_resolution": (8, 64), "texture_resolution": (64, 2048), "foreground_ratio": (0.05, 1),
                  "smooth": (0, 10000), "object_height": (0, 1000), "seed": (0, 2**31 - 1)}  # fmt: skip
    for name, (low, high) in documented.items():
        assert (float(controls[name]["min"]), float(controls[name]["max"])) == (low, high), name
    assert float(controls["threshold"]["min"]) > 0 and "max" not in controls["threshold"]  # any level > 0
    firsts = {name: controls[name]["options"][0] for name in ("format", "remove_background", "carve", "bake_texture",
                                                               "project_input", "unlit", "origin")}  # fmt: skip
    assert firsts == {"format": "glb", "remove_background": "true", "carve": "true", "bake_texture": "false",
                      "project_input": "true", "unlit": "false", "origin": "model"}  # fmt: skip


def test_page_names_the_model_and_the_limits():
    from monorecon.server import ServerSettings
    from monorecon.webui import render_page

    summary = {"class": "<Tiny>", "source": "bundled default model", "parameters": 2_500_000}
    page = render_page(ServerSettings(), summary)
    assert "Model: &lt;Tiny&gt; (bundled default model, 2.5 M parameters)</p>" in page
    assert "(20 MiB, at most 4096 pixels a side)" in page
    small = render_page(SMALL_SETTINGS, {"class": "X", "source": "injected"})
    assert "Model: X (injected)</p>" in small
    assert "(256 KiB, at most 512 pixels a side)" in small  # not "0 MiB"


def test_preview_of_a_textured_obj(client, form):
    """The preview answers the asked format (OBJ: a zip named after the upload) and says the mesh is textured."""
    data = {**browser_submission(form), "mc_resolution": "8", "format": "obj", "bake_texture": "true",
            "texture_resolution": "64"}  # fmt: skip
    response = client.post(form["data-preview"], data=data, files={"image": ("duck.png", object_png(), "image/png")})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert (payload["filename"], payload["media_type"], payload["textured"]) == ("duck.zip", "application/zip", True)
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(payload["mesh_base64"]))) as archive:
        assert sorted(archive.namelist()) == ["duck.mtl", "duck.obj", "duck.png"]
        assert Image.open(io.BytesIO(archive.read("duck.png"))).size == (64, 64)


def test_preview_download_can_be_the_bundle(client, form):
    """The page's Download select asks for the zip ``POST /reconstruct`` gives with ``bundle``: the preview's
    download is then that zip (mesh, input.png, result.json) and the rest of the answer is unchanged."""
    data = {**browser_submission(form), "mc_resolution": "8", "bundle": "true"}
    assert form["controls"]["bundle"]["options"] == ["false", "true"]  # the mesh file alone unless asked
    response = client.post(form["data-preview"], data=data, files={"image": ("duck.png", object_png(), "image/png")})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert (payload["filename"], payload["media_type"]) == ("duck_result.zip", "application/zip")
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(payload["mesh_base64"]))) as archive:
        assert sorted(archive.namelist()) == ["input.png", "mesh.glb", "result.json"]
        record = json.loads(archive.read("result.json"))
    assert record["input"] == "duck.png" and record["mesh"]["faces"] == payload["faces"] == 80
    assert payload["viewer"] is not None and payload["input_png_base64"]


def test_preview_turntable_is_rendered_holding_the_model(app, client, form, monkeypatch):
    """The turntable is CPU work too: it runs under the model lock, like the reconstruction."""
    from monorecon import video

    real, held = video.turntable_from_mesh, []

    def recording(*args, **kwargs):
        held.append(app.state.service._lock.locked())
        return real(*args, **kwargs)

    monkeypatch.setattr(video, "turntable_from_mesh", recording)
    data = {**browser_submission(form), "mc_resolution": "8", "format": "ply"}
    response = client.post(form["data-preview"], data=data, files={"image": ("duck.png", object_png(), "image/png")})
    assert response.status_code == 200, response.text
    assert held == [True]


def test_launch_ui_serves_the_page_with_the_given_options(monkeypatch):
    from monorecon import webui

    calls = []
    monkeypatch.setattr(webui, "run_server", lambda *args, **kwargs: calls.append((args, kwargs)))
    webui.launch_ui(port=7861, weights="w.safetensors", device="cpu", settings=SMALL_SETTINGS)
    assert calls == [
        (("127.0.0.1", 7861, "w.safetensors", None), {"ui": True, "device": "cpu", "settings": SMALL_SETTINGS})
    ]
