"""An interactive 3-D view of a mesh in a web browser: WebGL, no library, works offline.

Used by the web page (:mod:`monorecon.webui`), written as a standalone HTML file by ``monorecon reconstruct
--html`` and ``monorecon render --html`` (:func:`save_viewer_html`), and shown inline in Jupyter notebooks
(:class:`MeshView`): drag to turn the mesh (half a degree per pixel; the elevation stays within +-89 degrees), the
wheel to zoom (the distance times ``exp(deltaY / 1000)``, from 0.3 to 4 times the start's), double-click to return to
the start view. The start view and the light are the turntables' (:mod:`monorecon.video`):
in front (+Z), 15 degrees up, +Y up, a light at the eye under which a surface facing the viewer shows its colour.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .core.checks import check_int
from .core.mesh import Mesh, colors_to_uint8
from .io.atomic import atomic_write_bytes
from .io.images import png_bytes

__all__ = ["VIEWER_MAX_FACES", "VIEWER_SCRIPT", "MeshView", "save_viewer_html", "viewer_html", "viewer_payload"]

#: Largest mesh sent to the viewer (about 16 MB of base64 at this size).
VIEWER_MAX_FACES = 600_000


def _base64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def viewer_payload(mesh: Mesh) -> dict[str, Any] | None:
    """The mesh as :data:`VIEWER_SCRIPT` draws it, or None above :data:`VIEWER_MAX_FACES` faces.

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


#: The viewer (WebGL 1 or 2, no library): ``createMeshViewer(canvas)`` returns ``{show(data), redraw()}`` for a
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
    vec2 repeated(vec2 t) {  // a tiling texture repeats (WebGL 1 repeats only power-of-two images: done here)
      vec2 outside = min(step(1.001, t) + step(t, vec2(-0.001)), 1.0);  // beyond mediump rounding of the edges
      return mix(clamp(t, 0.0, 1.0), fract(t), outside);
    }
    void main() {
      vec3 albedo = textured ? texture2D(albedoTexture, repeated(textureCoord)).rgb : vertexColor;
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
  return { show, redraw };
}
"""


def viewer_html(mesh: Mesh, title: str = "monorecon mesh") -> str:
    """A standalone HTML page (no external files) that shows ``mesh`` in the viewer, filling the browser window.

    Raises:
        ValueError: a mesh over :data:`VIEWER_MAX_FACES` faces.
    """
    payload = viewer_payload(mesh)
    if payload is None:
        raise ValueError(
            f"mesh too large for the HTML viewer: {mesh.num_faces} faces > {VIEWER_MAX_FACES}; decimate it first"
        )
    data = json.dumps(payload).replace("</", "<\\/")  # no "</script>" inside the script
    caption = (
        f"{mesh.num_verts:,} vertices, {mesh.num_faces:,} faces: drag to turn, wheel to zoom, double-click to reset"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>
  html, body {{ margin: 0; height: 100%; overflow: hidden; font: 13px system-ui, sans-serif; }}
  #viewer {{ width: 100vw; height: 100vh; display: block; cursor: grab; touch-action: none; }}
  #caption {{ position: fixed; left: 10px; bottom: 8px; color: #5b6472; }}
</style>
</head>
<body>
<canvas id="viewer"></canvas>
<div id="caption">{html.escape(caption)}</div>
<script>
"use strict";
{VIEWER_SCRIPT}
let viewer = null;
try {{
  viewer = createMeshViewer(document.getElementById("viewer"));
}} catch (error) {{
  console.error(error);
}}
if (viewer) {{
  viewer.show({data});
  window.addEventListener("resize", viewer.redraw);
}} else {{
  document.getElementById("caption").textContent = "This browser has no WebGL: open the mesh file in a 3-D viewer.";
}}
</script>
</body>
</html>
"""


class MeshView:
    """``mesh`` in the interactive viewer, inline in a Jupyter notebook (any front end that shows HTML outputs).

    ``MeshView(mesh)`` as the last expression of a cell draws it: the page of :func:`viewer_html` in an iframe of
    ``width`` x ``height`` CSS pixels (no network; only its scripts may run). A mesh over :data:`VIEWER_MAX_FACES`
    faces is refused here, not when the cell's output is drawn.
    """

    def __init__(self, mesh: Mesh, width: int = 480, height: int = 360, title: str = "monorecon mesh") -> None:
        self.width, self.height = check_int(width, "width", 64, 4096), check_int(height, "height", 64, 4096)
        self.page = viewer_html(mesh, title)

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.page, quote=True)}" width="{self.width}" height="{self.height}" '
            'style="border: 0" sandbox="allow-scripts"></iframe>'
        )


def save_viewer_html(mesh: Mesh, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write :func:`viewer_html` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    atomic_write_bytes(path, viewer_html(mesh, title or path.stem).encode("utf-8"))
    return path
