"""The web page of the server: upload an image, set the options, see the processed input and a turntable, download.

One self-contained HTML page (no external scripts, styles or fonts, so it works offline) served at ``GET /`` by the
app of :mod:`monorecon.server`. Its form posts the same multipart fields as ``POST /reconstruct``:

* with JavaScript, to ``POST /preview``, which answers JSON with the mesh file, the processed input (PNG), a
  turntable of the mesh (GIF, :func:`monorecon.video.turntable_from_mesh`) and the mesh's arrays for the page's
  WebGL viewer (:func:`viewer_payload`: drag to turn it, wheel to zoom), shown with a download link;
* without JavaScript, straight to ``POST /reconstruct``, so the browser downloads the mesh.
"""

import base64
import html
import io
import logging
import os
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from PIL import Image

from .core.mesh import Mesh, colors_to_uint8
from .io.images import to_uint8
from .preprocess import DEFAULT_FOREGROUND_RATIO
from .server import MeshForm, ReconstructionService, ServerSettings, mesh_file, mesh_form_dependency, run_server

__all__ = ["VIEWER_MAX_FACES", "build_ui", "gif_bytes", "launch_ui", "png_bytes", "render_page", "viewer_payload"]

log = logging.getLogger("monorecon.webui")

#: Frame rate of the turntable GIF (GIF stores frame times in whole centiseconds).
PREVIEW_FPS = 10
#: Largest mesh sent to the page's WebGL viewer (about 16 MB of base64 at this size); larger ones get only the GIF.
VIEWER_MAX_FACES = 600_000


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3|4) float [0, 1] image -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes(frames: list[np.ndarray], fps: int = PREVIEW_FPS) -> bytes:
    """(H, W, 3) uint8 frames -> looping animated GIF bytes."""
    if not frames:
        raise ValueError("no frames for the GIF")
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def _base64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def viewer_payload(mesh: Mesh) -> dict[str, Any] | None:
    """The mesh as the page's WebGL viewer draws it, or None above :data:`VIEWER_MAX_FACES` faces.

    Arrays are little-endian and base64-encoded: ``positions`` float32 (V, 3) world (+Y up, the input view's front
    towards +Z); ``normals`` int8 (V, 3), unit vertex normals x 127; ``indices`` uint32 (F, 3), counter-clockwise
    from outside; ``colors`` uint8 (V, 3) or None; ``uvs`` float32 (V, 2) (``v`` up from the texture's bottom row)
    and ``texture_png`` (row 0 at the top) or None. ``center`` (3,) and ``radius`` bound the mesh, for framing.
    """
    if mesh.num_faces > VIEWER_MAX_FACES:
        return None
    verts = mesh.verts.detach().float().cpu().numpy()
    low, high = verts.min(axis=0), verts.max(axis=0)
    textured = mesh.texture is not None
    return {
        "positions": _base64(verts, "<f4"),
        "normals": _base64(np.round(mesh.vertex_normals.detach().cpu().numpy() * 127), "i1"),
        "indices": _base64(mesh.faces.cpu().numpy(), "<u4"),
        "colors": _base64(colors_to_uint8(mesh.vertex_colors), "u1") if mesh.vertex_colors is not None else None,
        "uvs": _base64(mesh.uvs.detach().cpu().numpy(), "<f4") if textured else None,
        "texture_png": base64.b64encode(png_bytes(mesh.texture.cpu().numpy())).decode("ascii") if textured else None,
        "center": ((low + high) / 2).tolist(),
        "radius": float(np.linalg.norm(high - low) / 2),
    }


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

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @router.post(
        "/preview", summary="image -> mesh file, processed input, turntable and viewer arrays (JSON, for the web page)"
    )
    def preview(form: Annotated[MeshForm, Depends(mesh_form)]) -> dict[str, Any]:
        from .video import turntable_from_mesh

        start = time.perf_counter()
        with service.exclusive():  # the turntable render is CPU work too
            result = service.reconstruct(form)
            frames = turntable_from_mesh(
                result.mesh, settings.preview_frames, size=settings.preview_size, progress=False
            )
        data, media_type, filename = mesh_file(result.mesh, form.mesh_format, form.stem, unlit=form.unlit)
        return {
            "filename": filename,
            "media_type": media_type,
            "mesh_base64": base64.b64encode(data).decode("ascii"),
            "input_png_base64": base64.b64encode(png_bytes(result.prepared.rgb)).decode("ascii"),
            "turntable_gif_base64": base64.b64encode(gif_bytes(frames)).decode("ascii"),
            "viewer": viewer_payload(result.mesh),
            "vertices": result.mesh.num_verts,
            "faces": result.mesh.num_faces,
            "textured": result.mesh.texture is not None,
            "seconds": round(time.perf_counter() - start, 2),
        }

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
        **server_options: ``device``, ``dtype``, ``settings``, ``log_level`` of :func:`monorecon.server.run_server`.
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
        _select("format", "Format", [("glb", "GLB (glTF binary)"), ("obj", "OBJ + MTL + PNG (zip)"), ("ply", "PLY")],
                None),
        _number("mc_resolution", "Mesh resolution", settings.default_mc_resolution, 8, settings.max_mc_resolution, 1,
                "marching-cubes grid; higher is finer and slower"),
        _number("threshold", "Density threshold", model_summary.get("mesh_threshold", 25.0), None, None, "any",
                "iso level of the surface"),
        _select("remove_background", "Background", [("true", "remove"), ("false", "keep the image as it is")],
                "uses an RGBA image's alpha, else a plain background"),
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
                "GLB: unlit viewers show the colours as they are, without their own lights"),
        _number("texture_resolution", "Texture size", settings.default_texture_resolution, 64,
                settings.max_texture_resolution, 1, "texture side in pixels (baked texture only)"),
        _number("seed", "Seed", 0, 0, 2**31 - 1, 1, None),
    ]  # fmt: skip
    parameters = model_summary.get("parameters")
    model_line = html.escape(
        f"{model_summary.get('class', 'model')} ({model_summary.get('source', '')}"
        + (f", {parameters / 1e6:.1f} M parameters" if isinstance(parameters, int) else "")
        + ")"
    )
    limit_mib = settings.max_upload_bytes / 2**20
    return (
        _PAGE.replace("__FIELDS__", "\n".join(fields))
        .replace("__MODEL__", model_line)
        .replace("__LIMIT__", f"{limit_mib:.0f} MiB, at most {settings.max_image_side} pixels a side")
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


#: The page's mesh viewer (WebGL 1 or 2, no library): ``createMeshViewer(canvas)`` returns ``{show(data)}`` for a
#: :func:`viewer_payload`, or null without WebGL. The camera orbits the mesh's centre, starting in front (+Z) 15 deg
#: up with +Y up, as :func:`monorecon.video.turntable_cameras`, under their light
#: (:data:`monorecon.video.PREVIEW_LIGHTING`: a surface facing the viewer shows its colour unchanged).
VIEWER_SCRIPT = """
function bytesOf(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

function createMeshViewer(canvas) {
  const options = { antialias: true, preserveDrawingBuffer: true };
  const gl = canvas.getContext("webgl2", options) || canvas.getContext("webgl", options);
  if (!gl) return null;
  const webgl2 = typeof WebGL2RenderingContext !== "undefined" && gl instanceof WebGL2RenderingContext;
  if (!webgl2 && !gl.getExtension("OES_element_index_uint")) return null;

  const vertexSource = `
    attribute vec3 position; attribute vec3 normal; attribute vec3 color; attribute vec2 uv;
    uniform mat4 viewProjection; uniform mat3 viewRotation;
    varying vec3 viewNormal; varying vec3 vertexColor; varying vec2 textureCoord;
    void main() {
      viewNormal = viewRotation * normal;
      vertexColor = color;
      textureCoord = vec2(uv.x, 1.0 - uv.y);  // v runs up from the texture's bottom row; image rows run down
      gl_Position = viewProjection * vec4(position, 1.0);
    }`;
  const fragmentSource = `
    precision mediump float;
    uniform bool textured; uniform sampler2D albedoTexture;
    varying vec3 viewNormal; varying vec3 vertexColor; varying vec2 textureCoord;
    void main() {
      vec3 albedo = textured ? texture2D(albedoTexture, textureCoord).rgb : vertexColor;
      float length_ = length(viewNormal);
      float facing = length_ > 0.0 ? abs(viewNormal.z) / length_ : 1.0;  // the light sits at the eye
      gl_FragColor = vec4(albedo * (0.45 + 0.55 * facing), 1.0);
    }`;
  function compile(type, source) {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
    return shader;
  }
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl.VERTEX_SHADER, vertexSource));
  gl.attachShader(program, compile(gl.FRAGMENT_SHADER, fragmentSource));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
  const attribute = (name) => gl.getAttribLocation(program, name);
  const uniform = (name) => gl.getUniformLocation(program, name);

  let buffers = [];
  let texture = null;
  let count = 0;
  let frame = null;
  const view = { center: [0, 0, 0], radius: 1, azimuth: 0, elevation: 15, zoom: 1 };
  const fovY = 40 * Math.PI / 180;

  function upload(location, data, size, type, normalized) {
    if (location < 0) return;
    if (!data) {  // absent: one constant value (light grey for the colour)
      gl.disableVertexAttribArray(location);
      gl.vertexAttrib4f(location, 0.8, 0.8, 0.8, 1);
      return;
    }
    const buffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
    gl.enableVertexAttribArray(location);
    gl.vertexAttribPointer(location, size, type, normalized, 0, 0);
    buffers.push(buffer);
  }

  function lookAt(eye, target) {  // world -> camera (column-major 4 x 4); the camera looks down its -Z, +Y up
    const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
    const unit = (a) => { const n = Math.hypot(a[0], a[1], a[2]); return [a[0] / n, a[1] / n, a[2] / n]; };
    const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    const back = unit(sub(eye, target));
    const right = unit(cross([0, 1, 0], back));
    const up = cross(back, right);
    return [right[0], up[0], back[0], 0, right[1], up[1], back[1], 0, right[2], up[2], back[2], 0,
            -dot(right, eye), -dot(up, eye), -dot(back, eye), 1];
  }

  function multiply(a, b) {  // column-major a * b
    const out = new Float32Array(16);
    for (let column = 0; column < 4; column++)
      for (let row = 0; row < 4; row++) {
        let sum = 0;
        for (let k = 0; k < 4; k++) sum += a[k * 4 + row] * b[column * 4 + k];
        out[column * 4 + row] = sum;
      }
    return out;
  }

  function draw() {
    frame = null;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * ratio) || canvas.width;
    const height = Math.round(canvas.clientHeight * ratio) || canvas.height;
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    gl.viewport(0, 0, width, height);
    gl.clearColor(0.98, 0.98, 0.98, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    if (!count) return;
    const distance = view.zoom * view.radius / Math.sin(fovY / 2);
    const azimuth = view.azimuth * Math.PI / 180, elevation = view.elevation * Math.PI / 180;
    const c = view.center;
    const eye = [c[0] + distance * Math.cos(elevation) * Math.sin(azimuth), c[1] + distance * Math.sin(elevation),
                 c[2] + distance * Math.cos(elevation) * Math.cos(azimuth)];
    const worldToCamera = lookAt(eye, c);
    const near = Math.max(distance - 1.5 * view.radius, distance * 0.01), far = distance + 1.5 * view.radius;
    const f = 1 / Math.tan(fovY / 2), aspect = width / height;
    const projection = [f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) / (near - far), -1,
                        0, 0, 2 * far * near / (near - far), 0];
    gl.useProgram(program);
    gl.enable(gl.DEPTH_TEST);
    gl.uniformMatrix4fv(uniform("viewProjection"), false, multiply(projection, worldToCamera));
    const m = worldToCamera;
    gl.uniformMatrix3fv(uniform("viewRotation"), false, [m[0], m[1], m[2], m[4], m[5], m[6], m[8], m[9], m[10]]);
    gl.uniform1i(uniform("textured"), texture ? 1 : 0);
    if (texture) { gl.activeTexture(gl.TEXTURE0); gl.bindTexture(gl.TEXTURE_2D, texture); }
    gl.uniform1i(uniform("albedoTexture"), 0);
    gl.drawElements(gl.TRIANGLES, count, gl.UNSIGNED_INT, 0);
  }
  const redraw = () => { if (frame === null) frame = requestAnimationFrame(draw); };

  function show(data) {
    buffers.forEach((buffer) => gl.deleteBuffer(buffer));
    buffers = [];
    if (texture) gl.deleteTexture(texture);
    texture = null;
    gl.useProgram(program);
    upload(attribute("position"), new Float32Array(bytesOf(data.positions).buffer), 3, gl.FLOAT, false);
    upload(attribute("normal"), new Int8Array(bytesOf(data.normals).buffer), 3, gl.BYTE, true);
    upload(attribute("color"), data.colors && bytesOf(data.colors), 3, gl.UNSIGNED_BYTE, true);
    upload(attribute("uv"), data.uvs && new Float32Array(bytesOf(data.uvs).buffer), 2, gl.FLOAT, false);
    const indices = gl.createBuffer();
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, indices);
    const indexArray = new Uint32Array(bytesOf(data.indices).buffer);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, indexArray, gl.STATIC_DRAW);
    buffers.push(indices);
    count = 0;  // drawn once the texture (if any) is loaded
    Object.assign(view, { center: data.center, radius: data.radius || 1, azimuth: 0, elevation: 15, zoom: 1 });
    const ready = () => { count = indexArray.length; draw(); };
    if (!data.texture_png) { ready(); return; }
    const image = new Image();
    image.onload = () => {
      texture = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D, texture);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB, gl.RGB, gl.UNSIGNED_BYTE, image);
      // No mipmaps and clamped edges: valid for any texture size in WebGL 1.
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      ready();
    };
    image.src = "data:image/png;base64," + data.texture_png;
  }

  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    view.azimuth -= (event.clientX - drag.x) * 0.5;
    view.elevation = Math.max(-89, Math.min(89, view.elevation + (event.clientY - drag.y) * 0.5));
    drag = { x: event.clientX, y: event.clientY };
    redraw();
  });
  const endDrag = () => { drag = null; };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    view.zoom = Math.max(0.3, Math.min(4, view.zoom * Math.exp(event.deltaY * 0.001)));
    redraw();
  }, { passive: false });
  canvas.addEventListener("dblclick", () => { Object.assign(view, { azimuth: 0, elevation: 15, zoom: 1 }); redraw(); });
  draw();
  return { show };
}
"""


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
  schema at <a href="/openapi.json">/openapi.json</a>.</footer>
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

function syncTexture() { textureSize.disabled = bake.value !== "true"; }
bake.addEventListener("change", syncTexture);
syncTexture();

document.getElementById("image").addEventListener("change", (event) => {
  const file = event.target.files[0];
  const chosen = document.getElementById("chosen");
  if (chosenUrl) URL.revokeObjectURL(chosenUrl);
  chosenUrl = file ? URL.createObjectURL(file) : null;
  chosen.hidden = !file;
  if (file) chosen.src = chosenUrl;
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
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
    document.getElementById("turntable").src = "data:image/gif;base64," + payload.turntable_gif_base64;
    if (meshUrl) URL.revokeObjectURL(meshUrl);
    meshUrl = URL.createObjectURL(new Blob([bytesOf(payload.mesh_base64)], { type: payload.media_type }));
    const link = document.getElementById("download");
    link.href = meshUrl;
    link.download = payload.filename;
    link.textContent = "Download " + payload.filename;
    document.getElementById("stats").textContent = payload.vertices.toLocaleString() + " vertices, " +
      payload.faces.toLocaleString() + " faces" + (payload.textured ? ", baked texture" : ", vertex colours") +
      "; " + payload.seconds + " s on the server.";
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
