"""REST API over :func:`monorecon.api.reconstruct_full` (FastAPI), with the web page of :mod:`monorecon.webui`.

Endpoints:

* ``GET /health``: ``{"status": "ok", "model": {...}, "limits": {...}}``.
* ``POST /reconstruct``: multipart form with an ``image`` file and options (``format`` glb|obj|ply|stl|usdz,
  ``mc_resolution``, ``threshold``, ``bake_texture``, ``texture_resolution``, ``foreground_ratio``,
  ``remove_background``, ``carve``, ``fill``, ``project_input``, ``unlit``, ``smooth``, ``seed``); answers the mesh
  file (GLB ``model/gltf-binary``; OBJ as a zip of the OBJ, MTL and PNG; binary PLY; binary STL ``model/stl``, Z-up
  for slicers, geometry only; USDZ ``model/vnd.usdz+zip``, always with a baked texture) with a ``Content-Disposition``
  file name. Meshes are in the monorecon world frame (+Y up, the input view's front facing +Z: glTF's frame), STL in
  its Z-up frame (:func:`monorecon.io.save_mesh`).
* ``GET /`` and ``POST /preview``: the web page and its JSON answer (see :mod:`monorecon.webui`).
* ``GET /docs`` (Swagger UI), ``GET /redoc`` (ReDoc), ``GET /openapi.json``: the schema; the documentation pages'
  scripts are served by the app itself (``fastapi-offline``), so they work with no internet.

Errors are JSON ``{"detail": "<one line>"}``: 400 for an upload that is not a readable image (empty, corrupt, too
large a side), 403 for a ``Host`` header off the allow-list or a cross-site ``Origin`` (:class:`HostOriginCheck`),
408 for a request body that stalls, 422 for bad options (unknown, repeated or empty form fields too) and for images
the pipeline cannot use (empty alpha, background not plain, no surface at the threshold), 413 for a request body over
the size limit, 503 (with ``Retry-After``) when the queue is full or its wait times out, and 500 (no traceback; logged
on the server) for anything unexpected. A full queue is refused before the body is read; options and the image's
header are checked before a request joins the queue.

One model is loaded when the app is created; reconstructions run one at a time, first come first served, since each
one already uses every CPU core. A request whose client disconnects while it waits leaves the queue without running.
"""

import asyncio
import collections
import dataclasses
import inspect
import io
import ipaddress
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from .api import (
    Reconstruction,
    ReconstructionModel,
    ReconstructOptions,
    load_model,
    model_foreground_ratio,
    model_mesh_threshold,
    model_record,
    model_silhouette_fill,
    reconstruct_full,
    timed,
)
from .core.checks import SEED_RANGE, TEXTURE_RESOLUTION_RANGE, check_device, check_int
from .core.extract import MAX_SMOOTH_ITERATIONS
from .core.mesh import MAX_PLACED_HEIGHT, MIN_PLACED_HEIGHT, PLACEMENT_ORIGINS, Mesh
from .io.images import check_image_header, load_image
from .io.mesh_io import check_unlit, gets_baked_texture, save_mesh
from .preprocess import PreprocessConfig

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "MESH_MEDIA_TYPES",
    "BodySizeLimit",
    "HostOriginCheck",
    "MeshForm",
    "ReconstructionService",
    "ServerSettings",
    "check_listen_address",
    "create_app",
    "mesh_file",
    "mesh_form_dependency",
    "run_server",
]

log = logging.getLogger("monorecon.server")

#: Media type of each download format. PLY has no registered media type; OBJ comes zipped with its MTL and PNG.
MESH_MEDIA_TYPES = {
    "glb": "model/gltf-binary",
    "obj": "application/zip",
    "ply": "application/octet-stream",
    "stl": "model/stl",
    "usdz": "model/vnd.usdz+zip",
}
_DOWNLOAD_SUFFIX = {"glb": ".glb", "obj": ".zip", "ply": ".ply", "stl": ".stl", "usdz": ".usdz"}

#: ``Host`` names a server run by :func:`run_server` answers to besides the address it listens on (the loopback
#: names); others get HTTP 403, so that a web page cannot reach the server through a DNS name of its own.
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1")

#: Paths whose requests wait in the model's queue (a full queue refuses them before their body is read).
_QUEUED_PATHS = frozenset({"/reconstruct", "/preview"})


@dataclass(frozen=True)
class ServerSettings:
    """Limits of the server (all requests share them).

    Attributes:
        max_upload_bytes: largest request body; larger ones get HTTP 413.
        max_image_side: largest accepted image side in pixels (HTTP 400 above).
        max_mc_resolution: cap on ``mc_resolution`` so that one request cannot take minutes.
        max_texture_resolution: cap on ``texture_resolution``.
        queue_timeout_s: how long a request waits for its turn before HTTP 503.
        body_timeout_s: how long the server waits for the next part of a request body before HTTP 408 (a stalled
            upload).
        max_queued: requests that may wait beside the running one; more get HTTP 503 at once (each waiting request
            holds its upload).
        preview_frames: frames of the web page's turntable GIF.
        preview_size: side in pixels of the turntable frames.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_side: int = 4096
    max_mc_resolution: int = 256
    max_texture_resolution: int = 2048
    queue_timeout_s: float = 600.0
    body_timeout_s: float = 30.0
    max_queued: int = 16
    preview_frames: int = 12
    preview_size: int = 160

    def __post_init__(self) -> None:
        if not 1024 <= self.max_upload_bytes <= 1 << 30:
            raise ValueError(f"max_upload_bytes must lie in [1 KiB, 1 GiB], got {self.max_upload_bytes}")
        if not 16 <= self.max_image_side <= 16384:
            raise ValueError(f"max_image_side must lie in [16, 16384], got {self.max_image_side}")
        if not 8 <= self.max_mc_resolution <= 1024:
            raise ValueError(f"max_mc_resolution must lie in [8, 1024], got {self.max_mc_resolution}")
        check_int(self.max_texture_resolution, "max_texture_resolution", *TEXTURE_RESOLUTION_RANGE)
        if not self.queue_timeout_s > 0:
            raise ValueError(f"queue_timeout_s must be positive, got {self.queue_timeout_s}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be positive, got {self.body_timeout_s}")
        check_int(self.max_queued, "max_queued", 0, 1000)
        if not 1 <= self.preview_frames <= 120:
            raise ValueError(f"preview_frames must lie in [1, 120], got {self.preview_frames}")
        if not 32 <= self.preview_size <= 1024:
            raise ValueError(f"preview_size must lie in [32, 1024], got {self.preview_size}")

    @property
    def default_mc_resolution(self) -> int:
        """``mc_resolution`` of a request that gives none: the API default, within the cap."""
        return min(ReconstructOptions.mc_resolution, self.max_mc_resolution)

    @property
    def default_texture_resolution(self) -> int:
        return min(ReconstructOptions.texture_resolution, self.max_texture_resolution)


@dataclass(frozen=True)
class MeshForm:
    """One reconstruction request as parsed from the multipart form (ranges already checked by FastAPI).

    Attributes:
        image: the uploaded file's bytes.
        filename: the uploaded file's name (may be empty).
        mesh_format: ``"glb"``, ``"obj"``, ``"ply"``, ``"stl"`` or ``"usdz"`` (which always gets a baked texture).
        unlit: GLB, USDZ: show the colours without lighting (see :func:`monorecon.io.mesh_io.save_mesh`).
        bundle: answer a zip of what ``monorecon reconstruct`` writes (mesh, ``input.png``, ``result.json``) rather
            than the mesh file alone.
    """

    image: bytes
    filename: str
    mesh_format: str
    mc_resolution: int
    threshold: float | None
    bake_texture: bool
    texture_resolution: int
    foreground_ratio: float | None
    remove_background: bool
    carve: bool
    seed: int
    fill: bool | None = None
    project_input: bool = True
    unlit: bool = False
    smooth: int = 0
    object_height: float = 0.0
    origin: str = "model"
    bundle: bool = False

    @property
    def stem(self) -> str:
        """A safe file name: the upload's stem (percent escapes such as a browser's ``%22`` decoded) reduced to
        ``[A-Za-z0-9._-]``, or ``"mesh"``."""
        return _safe_stem(self.filename, r"[^A-Za-z0-9._-]+")

    @property
    def unicode_stem(self) -> str:
        """:attr:`stem` keeping letters and digits of any script (the ``filename*`` of the download header)."""
        return _safe_stem(self.filename, r"[^\w.-]+")

    def to_options(self) -> ReconstructOptions:
        """The :class:`ReconstructOptions` of this request.

        Raises:
            ValueError: options that the API refuses, a texture asked for PLY or STL, ``unlit`` for a format
                without an unlit material, or ``foreground_ratio`` without background removal.
        """
        check_unlit(self.mesh_format, self.unlit)
        if self.foreground_ratio is not None and not self.remove_background:
            raise ValueError(
                "foreground_ratio frames the object that background removal finds: not with remove_background=false"
            )
        if 0 < self.object_height < MIN_PLACED_HEIGHT:
            raise ValueError(
                f"object_height must be 0 (the model's scale) or lie in [{MIN_PLACED_HEIGHT:g}, "
                f"{MAX_PLACED_HEIGHT:g}], got {self.object_height:g}"
            )
        return ReconstructOptions(
            preprocess=PreprocessConfig(
                remove_background=self.remove_background, foreground_ratio=self.foreground_ratio
            ),
            mc_resolution=self.mc_resolution,
            threshold=self.threshold,
            bake_texture=gets_baked_texture(self.mesh_format, self.bake_texture),
            texture_resolution=self.texture_resolution,
            carve=self.carve,
            fill=self.fill,
            project_input=self.project_input,
            smooth_iterations=self.smooth,
            object_height=self.object_height or None,
            origin=self.origin,
            seed=self.seed,
        )


def mesh_form_dependency(settings: ServerSettings) -> Callable[..., Awaitable[MeshForm]]:
    """A FastAPI dependency parsing the multipart reconstruction form, with ranges from ``settings``.

    The ranges are declared on the fields, so they appear in the OpenAPI schema and out-of-range values get HTTP 422.
    """

    async def mesh_form(
        request: Request,
        image: Annotated[UploadFile, File(description="the input image; an RGBA image's alpha is the object mask")],
        mesh_format: Annotated[
            Literal["glb", "obj", "ply", "stl", "usdz"],
            Form(
                alias="format",
                description="glb, obj (zip with MTL and PNG), ply, stl (3-D printing: Z-up, geometry only) or usdz "
                "(always a baked texture)",
            ),
        ] = "glb",
        mc_resolution: Annotated[
            int, Form(ge=8, le=settings.max_mc_resolution, description="marching-cubes grid points per axis")
        ] = settings.default_mc_resolution,
        threshold: Annotated[
            float | None,
            Form(gt=0, allow_inf_nan=False, description="density iso level of the surface (default: the model's)"),
        ] = None,
        bake_texture: Annotated[bool, Form(description="bake a UV texture instead of vertex colours")] = False,
        texture_resolution: Annotated[
            int,
            Form(
                ge=TEXTURE_RESOLUTION_RANGE[0],
                le=settings.max_texture_resolution,
                description="baked texture side in pixels",
            ),
        ] = settings.default_texture_resolution,
        foreground_ratio: Annotated[
            float | None,
            Form(
                ge=0.05,
                le=1.0,
                allow_inf_nan=False,
                description="share of the padded square taken by the object (default: the model's)",
            ),
        ] = None,
        remove_background: Annotated[
            bool, Form(description="mask the object (RGBA alpha, else a plain-background fill)")
        ] = True,
        carve: Annotated[
            bool, Form(description="cut the shape to the cone of the input silhouette (the input camera's view)")
        ] = True,
        fill: Annotated[
            bool | None,
            Form(description="with carve, fill the silhouette where the model left it empty (default: the model's)"),
        ] = None,
        project_input: Annotated[
            bool, Form(description="colour the surface the input sees with the input image (else the model's colours)")
        ] = True,
        unlit: Annotated[
            bool, Form(description="glb, usdz: show the colours without lighting (glb: unlit material, usdz: emissive)")
        ] = False,
        smooth: Annotated[
            int, Form(ge=0, le=MAX_SMOOTH_ITERATIONS, description="iterations of volume-keeping mesh smoothing")
        ] = 0,
        object_height: Annotated[
            float,
            Form(
                ge=0,
                le=MAX_PLACED_HEIGHT,
                allow_inf_nan=False,
                description="scale the mesh to this height (glTF units are metres); 0 keeps the model's scale",
            ),
        ] = 0.0,
        origin: Annotated[
            Literal[PLACEMENT_ORIGINS],
            Form(description="the mesh's origin: the model's frame, the bounding box's center, or its bottom (y = 0)"),
        ] = "model",
        seed: Annotated[int, Form(ge=SEED_RANGE[0], le=SEED_RANGE[1])] = 0,
        bundle: Annotated[
            bool,
            Form(
                description="answer a zip of mesh.<format>, input.png (the prepared input) and result.json (options, "
                "timings, the input camera in the mesh's frame), as monorecon reconstruct writes its folder"
            ),
        ] = False,
    ) -> MeshForm:
        fields = await request.form()  # parsed once: FastAPI keeps it
        unknown = sorted(set(fields) - known)
        if unknown:
            raise HTTPException(422, f"unknown form field {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        repeated = sorted(name for name in set(fields) if len(fields.getlist(name)) > 1)
        if repeated:
            raise HTTPException(422, f"form field {', '.join(repeated)} given more than once")
        empty = sorted(name for name, value in fields.multi_items() if value == "")  # FastAPI reads "" as left out
        if empty:
            raise HTTPException(422, f"form field {', '.join(empty)} is empty; leave it out for the default")
        data = await image.read()
        await image.close()  # its spooled copy: a waiting request holds the bytes once
        return MeshForm(
            image=data,
            filename=image.filename or "",
            mesh_format=mesh_format,
            mc_resolution=mc_resolution,
            threshold=threshold,
            bake_texture=bake_texture,
            texture_resolution=texture_resolution,
            foreground_ratio=foreground_ratio,
            remove_background=remove_background,
            carve=carve,
            seed=seed,
            fill=fill,
            project_input=project_input,
            unlit=unlit,
            smooth=smooth,
            object_height=object_height,
            origin=origin,
            bundle=bundle,
        )

    known = _form_field_names(mesh_form)
    return mesh_form


def _form_field_names(dependency: Callable) -> frozenset[str]:
    """The form field names of a dependency's ``Form`` / ``File`` parameters (their aliases where given)."""
    names = set()
    for name, parameter in inspect.signature(dependency).parameters.items():
        infos = [m for m in getattr(parameter.annotation, "__metadata__", ()) if hasattr(m, "alias")]
        if infos:
            names.add(infos[0].alias or name)
    return frozenset(names)


def _safe_stem(filename: str, unsafe: str) -> str:
    stem = Path(urllib.parse.unquote(filename or "")).stem
    return re.sub(unsafe, "_", stem).strip("._")[:64] or "mesh"


class ReconstructionService:
    """The loaded model, the queue of requests for it, and the server limits.

    The model is used by one request at a time: :meth:`turn` (async, for request handlers) queues first come first
    served; :meth:`exclusive` (blocking) holds the model from other code (embedding code, the tests). Errors come out
    as :class:`fastapi.HTTPException` with a one-line ``detail``.

    Attributes:
        model_record: the ``model`` entry of a bundle's ``result.json`` (:func:`monorecon.api.model_record`, as
            ``monorecon reconstruct`` writes it).
    """

    def __init__(
        self,
        model: Any,
        settings: ServerSettings,
        model_source: str = "injected",
        model_record: dict[str, str | None] | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.model_source = model_source
        if model_record is None:  # an injected model: where it runs as /health finds it
            summary = self.model_summary()
            model_record = {"weights": model_source, "config": None, "device": summary.get("device")}
            model_record["dtype"] = summary["compute_dtype"]
        self.model_record = model_record
        # A plain lock, not re-entrant: a handler takes it in the event loop, its work runs in a worker thread.
        self._lock = threading.Lock()
        self._waiting: collections.deque[object] = collections.deque()  # tickets of queued requests, in order
        self._last_seconds = 10.0  # of the last reconstruction: the Retry-After estimate

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model for the duration of the block (waits up to ``queue_timeout_s``, then HTTP 503)."""
        if not self._lock.acquire(timeout=self.settings.queue_timeout_s):
            raise self._busy("server busy: another reconstruction is running; retry later")
        try:
            yield
        finally:
            self._lock.release()

    @asynccontextmanager
    async def turn(self, request: Request) -> AsyncIterator[None]:
        """Wait for this request's turn with the model, first come first served, and hold it for the block.

        Raises:
            HTTPException: 503 when ``max_queued`` requests already wait or after ``queue_timeout_s``; 499 (which
                nobody receives) when the client disconnects while waiting: its request never runs.
        """
        if self.queue_full():
            raise self.queue_full_error()
        ticket = object()
        self._waiting.append(ticket)
        deadline = time.monotonic() + self.settings.queue_timeout_s
        try:
            while True:
                if await request.is_disconnected():
                    log.info("%s: the client left before its turn", request.url.path)
                    raise HTTPException(499, "the client closed the request before its turn")
                if self._waiting[0] is ticket and self._lock.acquire(blocking=False):
                    break
                if time.monotonic() > deadline:
                    raise self._busy("server busy: another reconstruction is running; retry later")
                await asyncio.sleep(_QUEUE_POLL_S)
        finally:
            self._waiting.remove(ticket)
        try:
            yield
        finally:
            self._lock.release()

    def queue_full(self) -> bool:
        """Whether ``max_queued`` requests already wait beside the running one (a new one gets HTTP 503)."""
        return len(self._waiting) >= self.settings.max_queued and self._lock.locked()

    def queue_full_error(self) -> HTTPException:
        """The HTTP 503 of a request that finds the queue full."""
        waiting = len(self._waiting)
        verb = "request is" if waiting == 1 else "requests are"
        return self._busy(f"server busy: {waiting} {verb} waiting already; retry later")

    def _busy(self, message: str) -> HTTPException:
        """HTTP 503 with a ``Retry-After`` of the last reconstruction's time for each request ahead."""
        wait = max(1, math.ceil(self._last_seconds * (len(self._waiting) + 1)))
        return HTTPException(503, message, headers={"Retry-After": str(wait)})

    def answer_file(self, result: Reconstruction, form: MeshForm) -> tuple[bytes, str, str]:
        """The file a request asked for: the mesh (:func:`mesh_file`), or with ``bundle`` the zip of what
        ``monorecon reconstruct`` writes (:func:`result_bundle`; ``result.json`` names the upload and the model:
        :attr:`model_record`). Returns (bytes, media type, download name)."""
        if not form.bundle:
            return mesh_file(result.mesh, form.mesh_format, form.stem, unlit=form.unlit)
        record = {"input": form.filename or "upload", "model": self.model_record}
        return result_bundle(result, form.mesh_format, form.stem, unlit=form.unlit, record=record)

    def model_summary(self) -> dict[str, Any]:
        """What /health reports about the model: class, source, size, device, and its key config values."""
        model = self.model
        summary: dict[str, Any] = {"class": type(model).__name__, "source": self.model_source}
        if isinstance(model, torch.nn.Module):
            parameters = list(model.parameters())
            summary["parameters"] = sum(p.numel() for p in parameters)
            if parameters:
                summary["device"] = str(parameters[0].device)
        autocast = getattr(model, "autocast_dtype", None)
        summary["compute_dtype"] = str(autocast or torch.float32).removeprefix("torch.")
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "cond_image_size"):
            summary["cond_image_size"] = config.cond_image_size
        if hasattr(model, "scene_code_shape"):
            summary["scene_code_shape"] = list(model.scene_code_shape)
        summary["mesh_threshold"] = model_mesh_threshold(model)
        summary["foreground_ratio"] = model_foreground_ratio(model)
        summary["silhouette_fill"] = model_silhouette_fill(model)
        return summary

    def checked_options(self, form: MeshForm) -> ReconstructOptions:
        """The request's options, and its image's header: what can be refused before the request waits for the model.

        Raises:
            HTTPException: 422 refused options, 400 an upload that is empty, not an image, or too large a side.
        """
        try:
            options = form.to_options()
        except ValueError as err:
            raise HTTPException(422, _one_line(str(err))) from None
        try:
            check_image_header(form.image, form.filename or "upload", max_side=self.settings.max_image_side)
        except ValueError as err:
            raise HTTPException(400, _one_line(str(err))) from None
        return options

    def decode_image(self, data: bytes, filename: str) -> np.ndarray:
        """Upload bytes -> (H, W, 3|4) float32 image in [0, 1]; HTTP 400 if it is not a readable image."""
        name = filename or "upload"
        if not data:
            raise HTTPException(400, f"the uploaded image {name} is empty")
        with tempfile.TemporaryDirectory(prefix="monorecon-upload-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            try:
                return load_image(path, max_side=self.settings.max_image_side)
            except ValueError as err:
                raise HTTPException(400, _one_line(str(err).replace(str(path), name))) from None

    def reconstruct(self, form: MeshForm, options: ReconstructOptions) -> Reconstruction:
        """Decode and reconstruct; call it holding the model (:meth:`turn`, :meth:`exclusive`): decoding too, as a
        4096 x 4096 image takes ~0.3 GB, which waiting requests would each hold.

        Raises:
            HTTPException: 400 unreadable image, 422 an image the pipeline cannot use.
        """
        image = self.decode_image(form.image, form.filename)
        start = time.perf_counter()
        try:
            result = reconstruct_full(image, self.model, options)
        except ValueError as err:
            message = _one_line(str(err))
            if message.startswith(_NOT_PLAIN):  # its advice names command-line options
                message = f"{_NOT_PLAIN}: send an RGBA image (alpha = the object), or remove_background=false"
            raise HTTPException(422, message) from None
        self._last_seconds = time.perf_counter() - start
        log.info(
            "reconstructed %s: %d faces in %.1f s", form.filename or "upload", result.mesh.num_faces, self._last_seconds
        )
        return result


_NOT_PLAIN = "background is not plain"
"""How :func:`monorecon.preprocess.border_alpha`'s error starts (its advice is the command line's)."""

_QUEUE_POLL_S = 0.05
"""How often a queued request looks whether it is its turn, and whether its client is still there."""


def mesh_file(mesh: Mesh, mesh_format: str, stem: str, *, unlit: bool = False) -> tuple[bytes, str, str]:
    """Encode a mesh for download.

    Args:
        mesh: the mesh (world frame).
        mesh_format: ``"glb"``, ``"obj"`` (zipped with its MTL and PNG when textured), ``"ply"``, ``"stl"`` or
            ``"usdz"``.
        stem: file name without suffix.
        unlit: GLB, USDZ: show the colours without lighting.

    Returns:
        (file bytes, media type, download file name).

    Raises:
        ValueError: unknown format, or a textured mesh for PLY.
    """
    if mesh_format not in MESH_MEDIA_TYPES:
        raise ValueError(f"unknown mesh format {mesh_format!r}; expected one of {', '.join(MESH_MEDIA_TYPES)}")
    with tempfile.TemporaryDirectory(prefix="monorecon-mesh-") as folder:
        path = save_mesh(mesh, Path(folder) / f"{stem}.{mesh_format}", unlit=unlit)
        data = zip_folder(Path(folder)) if mesh_format == "obj" else path.read_bytes()
    return data, MESH_MEDIA_TYPES[mesh_format], stem + _DOWNLOAD_SUFFIX[mesh_format]


def result_bundle(
    result: Reconstruction, mesh_format: str, stem: str, *, unlit: bool = False, record: dict | None = None
) -> tuple[bytes, str, str]:
    """Zip the files ``monorecon reconstruct`` writes for one input (:meth:`Reconstruction.save`: ``mesh.<format>``
    with its companions, ``input.png``, ``result.json`` holding ``record``'s entries first).

    Returns:
        (zip bytes, ``"application/zip"``, ``"<stem>_result.zip"``: not the ``<stem>.zip`` of an OBJ download, so
        the two can be saved side by side).

    Raises:
        ValueError: a format that cannot hold the mesh (see :meth:`Reconstruction.save`).
    """
    with tempfile.TemporaryDirectory(prefix="monorecon-result-") as folder:
        result.save(folder, mesh_format, unlit=unlit, record=record)
        data = zip_folder(Path(folder))
    return data, "application/zip", f"{stem}_result.zip"


def zip_folder(folder: Path) -> bytes:
    """The files of ``folder`` (not its sub-folders) as a deflated zip, in name order, each under its own name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in sorted(folder.iterdir()):
            archive.write(member, member.name)
    return buffer.getvalue()


def server_timing(timings: dict[str, float]) -> str:
    """An HTTP ``Server-Timing`` header value (W3C Server Timing: milliseconds, shown by browsers' developer tools)
    of stage -> seconds, e.g. ``"encode;dur=120.5, extract;dur=5100.0"``."""
    return ", ".join(f"{stage};dur={seconds * 1e3:.1f}" for stage, seconds in timings.items())


def _content_disposition(filename: str, unicode_filename: str | None = None) -> str:
    """``attachment`` header value for an ASCII file name (as made by :attr:`MeshForm.stem`), with the name in any
    script as ``filename*`` (RFC 6266) when one is given and differs."""
    value = f'attachment; filename="{filename}"'
    if unicode_filename and unicode_filename != filename:
        value += f"; filename*=UTF-8''{urllib.parse.quote(unicode_filename)}"
    return value


def download_names(form: MeshForm, filename: str) -> tuple[str, str]:
    """(ASCII, any-script) download names of an answer file named ``filename`` from ``form.stem``."""
    return filename, form.unicode_stem + filename[len(form.stem) :]


def create_app(
    model: ReconstructionModel | None = None,
    *,
    weights: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    settings: ServerSettings | None = None,
    ui: bool = True,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """Build the FastAPI app (the model is loaded here, once).

    Args:
        model: a loaded model (:func:`monorecon.api.load_model`), or any :class:`monorecon.api.ReconstructionModel`
            (``encode`` / ``query`` / ``extract_mesh``); None loads ``weights``.
        weights, config, device, dtype: passed to :func:`monorecon.api.load_model` when ``model`` is None (None
            weights: the bundled default model).
        settings: limits (default :class:`ServerSettings`).
        ui: also serve the web page at ``GET /`` and its ``POST /preview``.
        allowed_hosts: the ``Host`` names requests may carry (:class:`HostOriginCheck`; ``"*"``: any); None: any
            (in-process use such as a test client; :func:`run_server` passes its own list).

    Raises:
        ValueError: the model cannot be loaded.
    """
    settings = settings or ServerSettings()
    if model is None:
        model = load_model(weights, config, device=device, dtype=dtype)
        source = str(weights) if weights is not None else "bundled default model"
        record = model_record(weights, config, check_device(device), dtype)
    else:
        source, record = "injected", None
    service = ReconstructionService(model, settings, source, record)
    summary = service.model_summary()
    log.info(
        "model %s (%s) on %s, %s",
        summary["class"], source, summary.get("device", "cpu"), summary["compute_dtype"],
    )  # fmt: skip
    log.info("limits: %s", ", ".join(f"{key} {value}" for key, value in dataclasses.asdict(settings).items()))

    app = FastAPIOffline(
        title="monorecon",
        description="Single-image 3D reconstruction: upload an image, get a mesh (+Y up, front +Z, glTF frame).",
    )
    app.state.service = service
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_upload_bytes, timeout_s=settings.body_timeout_s, service=service
    )
    app.add_middleware(HostOriginCheck, allowed_hosts=None if allowed_hosts is None else tuple(allowed_hosts))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    mesh_form = mesh_form_dependency(settings)

    @app.head("/health", include_in_schema=False)
    @app.get("/health", summary="liveness and model summary")
    async def health() -> dict[str, Any]:  # async: answered by the event loop, whatever the worker threads do
        return {"status": "ok", "model": service.model_summary(), "limits": dataclasses.asdict(settings)}

    @app.post(
        "/reconstruct",
        summary="image -> mesh file",
        response_class=Response,
        responses={
            200: {
                "description": "the mesh file (attachment)",
                "content": {media_type: {} for media_type in sorted(set(MESH_MEDIA_TYPES.values()))},
            },
            400: {"description": "not a readable image"},
            413: {"description": "request body too large"},
            422: {"description": "bad options, or an image the pipeline cannot use"},
            503: {"description": "busy"},
        },
    )
    async def reconstruct(request: Request, form: Annotated[MeshForm, Depends(mesh_form)]) -> Response:
        options = service.checked_options(form)
        async with service.turn(request):
            result = await run_in_threadpool(service.reconstruct, form, options)
        timings = dict(result.timings)
        with timed(timings, "write"):
            data, media_type, filename = await run_in_threadpool(service.answer_file, result, form)
        headers = {
            "Content-Disposition": _content_disposition(*download_names(form, filename)),
            "X-Mesh-Vertices": str(result.mesh.num_verts),
            "X-Mesh-Faces": str(result.mesh.num_faces),
            "Server-Timing": server_timing(timings),
        }
        return Response(data, media_type=media_type, headers=headers)

    if ui:
        from .webui import build_ui

        app.include_router(build_ui(service))
    return app


def run_server(
    host: str = "127.0.0.1",
    port: int = 8000,
    weights: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    settings: ServerSettings | None = None,
    ui: bool = True,
    log_level: str = "info",
    model: ReconstructionModel | None = None,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Load the model and serve the API (and web page) with uvicorn until interrupted.

    The server has no authentication: keep the default loopback ``host`` unless a proxy in front controls access.
    ``model``: a model already loaded, or of one's own (:func:`create_app`), instead of ``weights``.
    ``allowed_hosts``: ``Host`` names to answer besides ``host`` and :data:`DEFAULT_ALLOWED_HOSTS` (the names clients
    use to reach a server listening on another address; ``"*"``: any).

    Raises:
        ValueError: a bad port, a host or port that cannot be listened on, or a model that cannot be loaded.
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    check_listen_address(host, port)  # before the model loads: uvicorn would only log it, after
    if not _is_loopback(host):
        log.warning("serving on %s: the API has no authentication; anyone who can reach it can use it", host)
    hosts = (*DEFAULT_ALLOWED_HOSTS, host, *allowed_hosts)
    if _is_wildcard(host) and not allowed_hosts:
        log.warning("serving on %s: requests must name a host in %s; add others with --allowed-host", host, hosts)
    app = create_app(
        model=model, weights=weights, config=config, device=device, dtype=dtype, settings=settings, ui=ui,
        allowed_hosts=hosts,
    )  # fmt: skip
    log.info("answering requests for host %s", ", ".join(dict.fromkeys(hosts)))
    uvicorn.run(app, host=host, port=port, log_level=log_level)


# --------------------------------------------------------------------------------------------------------------------
# Request size limit and error responses
# --------------------------------------------------------------------------------------------------------------------
class HostOriginCheck:
    """ASGI middleware: refuses (HTTP 403) a ``Host`` header off the allow-list, and a state-changing request (any
    method but GET, HEAD and OPTIONS) whose ``Origin`` header is present and is not the server's own.

    A web page on another site can post a form to a local server, and with a DNS name of its own pointed at the
    loopback address (DNS rebinding) also read the answer: the ``Origin`` check stops the first, the ``Host`` check the
    second. The server's own web page sends its own origin; clients such as curl send no ``Origin``.
    """

    def __init__(self, app: Callable, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None or "*" in allowed_hosts else {_host_name(h) for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin", b"").decode("latin-1")
        if self.allowed is not None and _host_name(host) not in self.allowed:
            await _refuse(scope, receive, send, 403, f"host {host or '(none)'!r} is not one this server answers to")
        elif origin and scope["method"] not in ("GET", "HEAD", "OPTIONS") and not _same_origin(origin, host):
            await _refuse(scope, receive, send, 403, f"cross-site request from {origin} refused")
        else:
            await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """The name of a ``Host`` header value or an address, without its port and brackets, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:  # name:port (an unbracketed IPv6 address has several colons)
        return host.split(":")[0]
    return host


def _same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names the server the request reached (its ``Host``; the scheme is not compared,
    as a TLS proxy in front may change it)."""
    parts = urllib.parse.urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower() != ""


class BodySizeLimit:
    """ASGI middleware: reads request bodies up to ``max_bytes`` (HTTP 413 past it), then hands them on.

    The declared ``Content-Length`` is checked first so that an oversized upload is refused before it is read; a
    request for the model's queue finds it full (HTTP 503) before its body is read too. A body that stalls for
    ``timeout_s`` between two of its parts gets HTTP 408. The body is held once: the chunks are joined and let go,
    and the joined body is let go once the app has taken it.
    """

    def __init__(
        self, app: Callable, max_bytes: int, timeout_s: float = 30.0, service: "ReconstructionService | None" = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.service = service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if self.service is not None and scope["path"] in _QUEUED_PATHS and self.service.queue_full():
            busy = self.service.queue_full_error()
            await _refuse(scope, receive, send, busy.status_code, busy.detail, busy.headers)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                detail = f"the request body stalled: nothing received for {self.timeout_s:g} s"
                await _refuse(scope, receive, send, 408, detail, {"Connection": "close"})
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        chunks.clear()

        async def replay() -> dict:
            nonlocal body
            if body is None:
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Callable, send: Callable) -> None:
        limit = size_text(self.max_bytes)
        await _refuse(scope, receive, send, 413, f"request body larger than the {limit} limit")


async def _refuse(
    scope: dict, receive: Callable, send: Callable, status: int, detail: str, headers: dict | None = None
) -> None:
    """Answer a request from a middleware with an error (a one-line JSON ``detail``, as the app's errors), logged."""
    log.info("%s %s: %d %s", scope["method"], scope["path"], status, detail)
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """The app's own refusals (4xx, 503), logged with their reason (the access log gives the status alone)."""
    log.info("%s %s: %d %s", request.method, request.url.path, exc.status_code, exc.detail)
    return await http_exception_handler(request, exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's list of validation errors -> one line naming each field."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "form"))
        message = str(error.get("msg", "invalid"))
        if "Expected UploadFile" in message:  # a part without a filename is a text field
            message = "expected a file (a multipart part with a filename), got a text field"
        parts.append(f"{field}: {message}" if field else message)
    detail = _one_line("; ".join(parts) or "invalid request")
    log.info("%s %s: 422 %s", request.method, request.url.path, detail)
    return JSONResponse({"detail": detail}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


def size_text(size: int) -> str:
    """A byte count for people: ``"20 MiB"``, ``"256 KiB"``, ``"1.5 MiB"``, ``"1000 bytes"`` (at most 1 decimal)."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{round(size / scale, 1):g} {unit}"
    return f"{size} bytes"


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "error"


def check_listen_address(host: str, port: int) -> None:
    """Raise ValueError (one line) unless ``host`` resolves and ``port`` can be bound there now (a trial socket with
    ``SO_REUSEADDR``, as uvicorn opens its own)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(
            f"cannot listen on {host}:{port}: unknown host ({getattr(err, 'strerror', None) or err})"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def _is_wildcard(host: str) -> bool:
    """Whether ``host`` is the any-address (0.0.0.0, ::), which clients do not use as a name."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
