"""The web page of the server: upload an image, set the options, see the processed input and a turntable, download.

One self-contained HTML page (no external scripts, styles or fonts, so it works offline) served at ``GET /`` by the
app of :mod:`monorecon.server`. Its form posts the same multipart fields as ``POST /reconstruct``:

* with JavaScript, to ``POST /preview``, which answers JSON with the mesh file, the processed input (PNG), the
  mesh drawn over it by the input camera (PNG, :func:`monorecon.overlay.overlay_mesh`: how it lines up), a
  turntable of the mesh (GIF, :func:`monorecon.video.turntable_from_mesh`) and the mesh's arrays for the page's
  WebGL viewer (:func:`monorecon.viewer.viewer_payload`: drag to turn it, wheel to zoom), shown with a download
  link;
* without JavaScript, straight to ``POST /reconstruct``, so the browser downloads the mesh.
"""

import base64
import html
import io
import json
import logging
import os
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from .api import Reconstruction, timed
from .core.checks import SEED_RANGE
from .core.extract import MAX_SMOOTH_ITERATIONS
from .core.mesh import MAX_PLACED_HEIGHT
from .io.images import png_bytes
from .preprocess import DEFAULT_FOREGROUND_RATIO
from .server import (
    MeshForm,
    ReconstructionService,
    ServerSettings,
    download_names,
    mesh_form_dependency,
    run_server,
    size_text,
)
from .viewer import VIEWER_SCRIPT, viewer_payload

__all__ = ["build_ui", "gif_bytes", "launch_ui", "render_page"]

log = logging.getLogger("monorecon.webui")

#: Longer side in pixels of the preview's overlay of the mesh on the processed input (the page shows 240 px).
PREVIEW_OVERLAY_SIDE = 256

#: ``min`` of the page's threshold field: the API takes any level > 0, which an HTML ``min`` (inclusive) cannot say.
THRESHOLD_MIN = 1e-6

#: Frame rate of the turntable GIF (GIF stores frame times in whole centiseconds).
PREVIEW_FPS = 10


def gif_bytes(frames: list[np.ndarray], fps: int = PREVIEW_FPS) -> bytes:
    """(H, W, 3) uint8 frames -> looping animated GIF bytes."""
    if not frames:
        raise ValueError("no frames for the GIF")
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def build_ui(service: ReconstructionService) -> APIRouter:
    """Routes of the web page: ``GET /`` (the page) and ``POST /preview`` (its JSON answer).

    Args:
        service: the server's model, lock and limits (see :func:`monorecon.server.create_app`, which adds these
            routes unless ``ui=False``).
    """
    router = APIRouter()
    settings = service.settings
    page = render_page(settings, service.model_summary())
    mesh_form = mesh_form_dependency(settings)

    @router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @router.post(
        "/preview",
        summary="image -> mesh file, processed input, turntable and viewer arrays (JSON, for the web page)",
        response_class=JSONResponse,
    )
    async def preview(request: Request, form: Annotated[MeshForm, Depends(mesh_form)]) -> Response:
        from .overlay import overlay_mesh
        from .video import turntable_from_mesh

        start = time.perf_counter()
        options = service.checked_options(form)

        def reconstruct_and_render() -> tuple[Reconstruction, np.ndarray, list[np.ndarray], dict[str, float]]:
            result = service.reconstruct(form, options)
            timings = dict(result.timings)
            with timed(timings, "overlay"):
                side = PREVIEW_OVERLAY_SIDE
                overlay = overlay_mesh(result.mesh, result.prepared.rgba(), result.camera, max_side=side)
            with timed(timings, "turntable"):
                frames = turntable_from_mesh(
                    result.mesh, settings.preview_frames, size=settings.preview_size, progress=False
                )
            return result, overlay, frames, timings

        def answer(
            result: Reconstruction, overlay: np.ndarray, frames: list[np.ndarray], timings: dict[str, float]
        ) -> Response:
            """The JSON answer, encoded here: a large mesh's viewer arrays, images and JSON take seconds."""
            with timed(timings, "write"):
                data, media_type, filename = service.answer_file(result, form)
            payload = {
                "filename": download_names(form, filename)[1],
                "media_type": media_type,
                "mesh_base64": base64.b64encode(data).decode("ascii"),
                "input_png_base64": base64.b64encode(png_bytes(result.prepared.rgb)).decode("ascii"),
                "overlay_png_base64": base64.b64encode(png_bytes(overlay)).decode("ascii"),
                "turntable_gif_base64": base64.b64encode(gif_bytes(frames)).decode("ascii"),
                "viewer": viewer_payload(result.mesh),
                "vertices": result.mesh.num_verts,
                "faces": result.mesh.num_faces,
                "textured": result.mesh.texture is not None,
                "seconds": round(time.perf_counter() - start, 2),
                "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            }
            return Response(json.dumps(payload).encode(), media_type="application/json")

        async with service.turn(request):  # the turntable render is CPU work too
            rendered = await run_in_threadpool(reconstruct_and_render)
        # in a worker thread too, not holding the model: the event loop keeps answering (e.g. /health)
        return await run_in_threadpool(answer, *rendered)

    return router


def launch_ui(
    host: str = "127.0.0.1",
    port: int = 7860,
    weights: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    **server_options: Any,
) -> None:
    """Serve the web page (and the REST API beside it) until interrupted; open ``http://host:port/`` in a browser.

    Args:
        host, port: where to listen (loopback by default: the server has no authentication).
        weights, config: the model (None: the bundled default), as for :func:`monorecon.api.load_model`.
        **server_options: ``device``, ``dtype``, ``settings``, ``log_level``, ``model`` of
            :func:`monorecon.server.run_server`.
    """
    log.info("monorecon web UI: open http://%s:%d/ in a browser once the model is loaded", host, port)
    run_server(host, port, weights, config, ui=True, **server_options)


# --------------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------------
def render_page(settings: ServerSettings, model_summary: dict[str, Any]) -> str:
    """The HTML of the page, with the form's ranges and defaults taken from ``settings``."""
    fill_options = [("true", "on"), ("false", "off")]
    if not model_summary.get("silhouette_fill", False):  # the first option is the default
        fill_options.reverse()
    fields = [
        _select("format", "Format", [("glb", "GLB (glTF binary)"), ("obj", "OBJ + MTL + PNG (zip)"), ("ply", "PLY"),
                                     ("stl", "STL (3-D printing)"), ("usdz", "USDZ (AR Quick Look)")],
                "USDZ always gets a baked texture (AR viewers show no vertex colours); STL is geometry only, +Z up"),
        _number("mc_resolution", "Mesh resolution", settings.default_mc_resolution, 8, settings.max_mc_resolution, 1,
                "marching-cubes grid; higher is finer and slower"),
        _number("threshold", "Density threshold", model_summary.get("mesh_threshold", 25.0), THRESHOLD_MIN, None,
                "any", "iso level of the surface (> 0)"),
        _select("remove_background", "Background", [("true", "remove"), ("false", "keep the image as it is")],
                "uses an RGBA image's alpha, else a plain background; keeping it also keeps the framing"),
        _number("foreground_ratio", "Object size", model_summary.get("foreground_ratio", DEFAULT_FOREGROUND_RATIO),
                0.05, 1.0, 0.01,
                "share of the frame taken by the object"),
        _select("carve", "Silhouette carving", [("true", "on"), ("false", "off")],
                "cut the shape to the input silhouette's cone"),
        _select("fill", "Silhouette fill", fill_options,
                "with carving, fill parts of the silhouette the model left empty (default: the model's setting)"),
        _select("bake_texture", "Colours", [("false", "vertex colours"), ("true", "baked UV texture")], None),
        _select("project_input", "Photo colours", [("true", "on"), ("false", "off")],
                "colour the surface the photo sees with the photo itself (else the model's colours)"),
        _select("unlit", "Material", [("false", "lit (PBR)"), ("true", "unlit")],
                "GLB, USDZ: viewers show the colours as they are, without their own lights"),
        _number("texture_resolution", "Texture size", settings.default_texture_resolution, 64,
                settings.max_texture_resolution, 1, "texture side in pixels (baked texture only)"),
        _number("smooth", "Smoothing", 0, 0, MAX_SMOOTH_ITERATIONS, 1,
                "iterations of volume-keeping smoothing, e.g. 150 at resolution 256 (0: off)"),
        _number("object_height", "Object height", 0, 0, MAX_PLACED_HEIGHT, "any",
                "scale the mesh to this height (GLB: metres; 0 keeps the model's scale)"),
        _select("origin", "Origin", [("model", "model frame"), ("center", "bounding-box centre"),
                                     ("bottom", "bottom (stands on y = 0)")],
                "where the mesh's origin lies (AR viewers and game engines expect the bottom)"),
        _number("seed", "Seed", 0, *SEED_RANGE, 1, None),
        _select("bundle", "Download", [("false", "the mesh file"), ("true", "zip: mesh, input.png, result.json")],
                "result.json: the options, the timings and the input camera in the mesh's frame"),
    ]  # fmt: skip
    parameters = model_summary.get("parameters")
    model_line = html.escape(
        f"{model_summary.get('class', 'model')} ({model_summary.get('source', '')}"
        + (f", {parameters / 1e6:.1f} M parameters" if isinstance(parameters, int) else "")
        + ")"
    )
    return (
        _PAGE.replace("__FIELDS__", "\n".join(fields))
        .replace("__MODEL__", model_line)
        .replace(
            "__LIMIT__", f"{size_text(settings.max_upload_bytes)}, at most {settings.max_image_side} pixels a side"
        )
        .replace("__VIEWER_SCRIPT__", VIEWER_SCRIPT)
    )


def _label(name: str, label: str, control: str, hint: str | None) -> str:
    hint_html = f'<span class="hint">{html.escape(hint)}</span>' if hint else ""
    return f'<label for="{name}">{html.escape(label)}</label><div>{control}{hint_html}</div>'


def _number(
    name: str, label: str, value: float, low: float | None, high: float | None, step: float | str, hint: str | None
) -> str:
    bounds = (f' min="{low}"' if low is not None else "") + (f' max="{high}"' if high is not None else "")
    control = f'<input type="number" id="{name}" name="{name}" value="{value}" step="{step}"{bounds} required>'
    return _label(name, label, control, hint)


def _select(name: str, label: str, options: list[tuple[str, str]], hint: str | None) -> str:
    items = "".join(f'<option value="{value}">{html.escape(text)}</option>' for value, text in options)
    return _label(name, label, f'<select id="{name}" name="{name}">{items}</select>', hint)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>monorecon: image to 3D mesh</title>
<link rel="icon" href="data:,">
<style>
  :root { color-scheme: light; --accent: #2f5fb3; --border: #d0d5dd; --muted: #5b6472; }
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }
  header { background: #fff; border-bottom: 1px solid var(--border); padding: 14px 24px; }
  header h1 { font-size: 20px; margin: 0; }
  header p { margin: 2px 0 0; color: var(--muted); font-size: 13px; }
  main { display: flex; flex-wrap: wrap; gap: 20px; padding: 20px 24px; align-items: flex-start; }
  section { background: #fff; border: 1px solid var(--border); border-radius: 8px; padding: 16px 18px; }
  #input-card { flex: 0 1 420px; }
  #result-card { flex: 1 1 420px; min-height: 200px; }
  h2 { font-size: 16px; margin: 0 0 12px; }
  .grid { display: grid; grid-template-columns: max-content 1fr; gap: 8px 12px; align-items: center; }
  .grid label { font-weight: 600; font-size: 14px; }
  .hint { display: block; color: var(--muted); font-size: 12px; }
  input[type=number], select { width: 100%; box-sizing: border-box; padding: 5px 6px; font: inherit;
    border: 1px solid var(--border); border-radius: 4px; background: #fff; }
  input:disabled { color: #9aa1ab; background: #f0f1f3; }
  #drop { border: 2px dashed var(--border); border-radius: 6px; padding: 12px; margin-bottom: 14px;
    text-align: center; }
  #drop img { max-width: 100%; max-height: 180px; display: block; margin: 8px auto 0; }
  button { margin-top: 16px; width: 100%; padding: 9px; font: inherit; font-weight: 600; color: #fff;
    background: var(--accent); border: 0; border-radius: 5px; cursor: pointer; }
  button:disabled { background: #8aa0c8; cursor: progress; }
  #status { color: var(--muted); margin: 0 0 10px; }
  #error { color: #a4161a; background: #fdecec; border: 1px solid #f2b8b5; border-radius: 5px; padding: 8px 10px; }
  .views { display: flex; flex-wrap: wrap; gap: 16px; }
  figure { margin: 0; text-align: center; }
  figure img { width: 240px; height: 240px; object-fit: contain; background: #fafafa; border: 1px solid var(--border);
    image-rendering: auto; }
  figcaption { font-size: 13px; color: var(--muted); }
  #viewer { width: 240px; height: 240px; display: block; background: #fafafa; border: 1px solid var(--border);
    cursor: grab; touch-action: none; }
  #download { display: inline-block; margin-top: 14px; padding: 8px 14px; border-radius: 5px; color: #fff;
    background: #23804a; text-decoration: none; font-weight: 600; }
  footer { padding: 0 24px 20px; color: var(--muted); font-size: 12px; }
  code { font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>monorecon &mdash; single image to 3D mesh</h1>
  <p>Model: __MODEL__</p>
</header>
<main>
  <section id="input-card">
    <h2>Input</h2>
    <form id="reconstruct-form" action="/reconstruct" method="post" enctype="multipart/form-data"
          data-preview="/preview">
      <div id="drop">
        <input type="file" id="image" name="image" accept="image/*" required>
        <span class="hint">One object; an RGBA image or a plain background works best (__LIMIT__).</span>
        <img id="chosen" alt="" hidden>
      </div>
      <div class="grid">
__FIELDS__
      </div>
      <button type="submit" id="submit">Reconstruct</button>
    </form>
  </section>
  <section id="result-card">
    <h2>Result</h2>
    <p id="status">Choose an image and press Reconstruct. On a CPU this takes from seconds to a few minutes.</p>
    <div id="error" role="alert" hidden></div>
    <div id="result" hidden>
      <div class="views">
        <figure><img id="processed" alt="processed input"><figcaption>processed input (what the model sees)
          </figcaption></figure>
        <figure><img id="overlay" alt="the mesh over the processed input"><figcaption>the mesh over it (outline
          in green)</figcaption></figure>
        <figure id="viewer-figure"><canvas id="viewer" width="240" height="240"></canvas>
          <figcaption id="viewer-caption">3-D view: drag to turn, wheel to zoom, double-click to reset</figcaption>
        </figure>
        <figure><img id="turntable" alt="turntable of the mesh"><figcaption>turntable of the mesh</figcaption></figure>
      </div>
      <a id="download" href="#" download>Download mesh</a>
      <p id="stats" class="hint"></p>
    </div>
  </section>
</main>
<footer>Meshes are +Y up with the input view's front facing +Z (the glTF frame).
  REST API: <code>POST /reconstruct</code> (multipart, same fields as this form), <code>GET /health</code>;
  documentation at <a href="/docs">/docs</a>, schema at <a href="/openapi.json">/openapi.json</a>.</footer>
<script>
"use strict";
__VIEWER_SCRIPT__
let viewer = null;
try {
  viewer = createMeshViewer(document.getElementById("viewer"));
} catch (error) {
  console.error(error);
}
function showInViewer(data) {
  const caption = document.getElementById("viewer-caption");
  if (!viewer) caption.textContent = "3-D view: not available in this browser (no WebGL)";
  else if (!data) caption.textContent = "3-D view: the mesh is too large to preview; download it";
  else caption.textContent = "3-D view: drag to turn, wheel to zoom, double-click to reset";
  document.getElementById("viewer").style.display = viewer && data ? "block" : "none";
  if (viewer && data) viewer.show(data);
}

const form = document.getElementById("reconstruct-form");
const statusLine = document.getElementById("status");
const errorBox = document.getElementById("error");
const submitButton = document.getElementById("submit");
const bake = document.getElementById("bake_texture");
const textureSize = document.getElementById("texture_resolution");
let meshUrl = null;
let chosenUrl = null;

const meshFormat = document.getElementById("format");
const material = document.getElementById("unlit");
const photoColours = document.getElementById("project_input");
const carve = document.getElementById("carve");
const fill = document.getElementById("fill");
const removeBackground = document.getElementById("remove_background");
const foregroundRatio = document.getElementById("foreground_ratio");
// USDZ always gets a baked texture (the server bakes for it), so its size applies whatever the colours select says;
// PLY and STL carry none, so a baked texture cannot be asked for (a disabled select is not sent: vertex colours).
// Only GLB and USDZ have an unlit material (disabled: not sent, lit). An STL file has no colours (the preview still
// shows them); the fill is part of carving; the object size frames what background removal finds (the server refuses
// it with the image kept as it is).
function syncControls() {
  bake.disabled = meshFormat.value === "ply" || meshFormat.value === "stl";
  textureSize.disabled = (bake.disabled || bake.value !== "true") && meshFormat.value !== "usdz";
  material.disabled = meshFormat.value !== "glb" && meshFormat.value !== "usdz";
  photoColours.disabled = meshFormat.value === "stl";
  fill.disabled = carve.value !== "true";
  foregroundRatio.disabled = removeBackground.value !== "true";
}
for (const control of [bake, meshFormat, carve, removeBackground]) control.addEventListener("change", syncControls);
syncControls();

document.getElementById("image").addEventListener("change", (event) => {
  const file = event.target.files[0];
  const chosen = document.getElementById("chosen");
  if (chosenUrl) URL.revokeObjectURL(chosenUrl);
  chosenUrl = file ? URL.createObjectURL(file) : null;
  chosen.hidden = !file;
  if (file) chosen.src = chosenUrl;
});

function colourNote(payload) {
  if (payload.media_type === "model/stl") return "; the STL file holds the geometry only (the views show its colours)";
  return payload.textured ? ", baked texture" : ", vertex colours";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  document.getElementById("result").hidden = true;  // a new run, or its error, must not sit beside the old result
  submitButton.disabled = true;
  const started = performance.now();
  const tick = () => {
    statusLine.textContent = "Reconstructing\\u2026 " + ((performance.now() - started) / 1000).toFixed(0) + " s";
  };
  tick();
  const timer = setInterval(tick, 1000);
  try {
    const response = await fetch(form.dataset.preview, { method: "POST", body: new FormData(form) });
    const payload = await response.json().catch(() => ({ detail: response.status + " " + response.statusText }));
    if (!response.ok) throw new Error(payload.detail || ("HTTP " + response.status));
    document.getElementById("processed").src = "data:image/png;base64," + payload.input_png_base64;
    document.getElementById("overlay").src = "data:image/png;base64," + payload.overlay_png_base64;
    document.getElementById("turntable").src = "data:image/gif;base64," + payload.turntable_gif_base64;
    if (meshUrl) URL.revokeObjectURL(meshUrl);
    meshUrl = URL.createObjectURL(new Blob([bytesOf(payload.mesh_base64)], { type: payload.media_type }));
    const link = document.getElementById("download");
    link.href = meshUrl;
    link.download = payload.filename;
    link.textContent = "Download " + payload.filename;
    document.getElementById("stats").textContent = payload.vertices.toLocaleString() + " vertices, " +
      payload.faces.toLocaleString() + " faces" + colourNote(payload) +
      "; " + payload.seconds + " s on the server (" +
      Object.entries(payload.timings).map(([stage, seconds]) => stage + " " + seconds.toFixed(1) + " s").join(", ") +
      ").";
    document.getElementById("result").hidden = false;
    showInViewer(payload.viewer);  // once shown, so that the canvas has its layout size
    statusLine.textContent = "Done.";
  } catch (error) {
    errorBox.textContent = error.message;
    errorBox.hidden = false;
    statusLine.textContent = "Failed.";
  } finally {
    clearInterval(timer);
    submitButton.disabled = false;
  }
});
</script>
</body>
</html>
"""
