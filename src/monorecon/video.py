"""Turntable renders of a mesh (rasteriser), saved as MP4 and GIF.

Turntable cameras orbit the world +Y axis starting at the front (azimuth 0, +Z), looking at the origin; a mesh is
first centred and scaled to fit their view (:data:`FIT_RADIUS`), so that a mesh in any units and position is framed
alike (a reconstruction, a scan in millimetres, a model standing on y = 0). The light
sits at the eye (:data:`PREVIEW_LIGHTING`, as in the web page's 3-D view): a surface facing the camera shows its
colour unchanged, so colours projected from a photo look as in the photo, and oblique ones darken to 0.45.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .core.cameras import PerspectiveCameras, orbit_c2w
from .core.checks import check_int
from .core.mesh import Mesh
from .io.atomic import atomic_path
from .io.images import to_uint8

#: Radius of the bounding sphere (about the box centre, :meth:`Mesh.bounding_sphere`) a turntable scales a mesh to:
#: at the default distance 1.9 and 40 deg field of view it fills the frame (asin(0.6 / 1.9) = 18.4 deg of 20).
FIT_RADIUS = 0.6

#: Accepted frame rates of the saved turntables.
TURNTABLE_FPS_RANGE = (1, 240)

#: Fastest GIF frame rate: browsers show a GIF delay under 2 hundredths of a second as 10 hundredths.
GIF_MAX_FPS = 50

#: Largest turntable held in memory (frames x size^2 x 3 bytes): 2 GiB.
MAX_TURNTABLE_BYTES = 2 * 1024**3

#: Headlight of turntables and of the web page's viewer: ambient + diffuse = 1, no highlight.
PREVIEW_LIGHTING = {"ambient": 0.45, "diffuse": 0.55, "specular": 0.0}


def check_turntable_size(
    n_frames: int, size: int, names: tuple[str, str] = ("turntable frame count", "turntable size")
) -> None:
    """Refuse (``ValueError``, naming the options ``names``) a frame count outside [1, 3600], a side outside
    [16, 2048] or more frames than :data:`MAX_TURNTABLE_BYTES` holds (turntables are rendered in memory)."""
    check_int(n_frames, names[0], 1, 3600)
    check_int(size, names[1], 16, 2048)
    if n_frames * size * size * 3 > MAX_TURNTABLE_BYTES:
        raise ValueError(
            f"{n_frames} turntable frames of {size} x {size} pixels would need "
            f"{n_frames * size * size * 3 / 2**30:.1f} GiB (at most {MAX_TURNTABLE_BYTES / 2**30:.0f}): give fewer "
            f"frames or a smaller size"
        )


def turntable_cameras(
    n_frames: int, *, elevation_deg: float = 15.0, distance: float = 1.9, fov_deg: float = 40.0, size: int = 256
) -> PerspectiveCameras:
    """(n_frames) cameras at evenly spaced azimuths 0 .. 360 deg (exclusive), checked by
    :func:`check_turntable_size`."""
    check_turntable_size(n_frames, size)
    if not (math.isfinite(distance) and distance > 0):
        raise ValueError(f"turntable camera distance must be positive, got {distance}")
    if not -90 < elevation_deg < 90:
        raise ValueError(f"turntable elevation must lie strictly between -90 and 90 degrees, got {elevation_deg}")
    azimuths = torch.arange(n_frames, dtype=torch.float32) * (360.0 / n_frames)
    c2w = orbit_c2w(azimuths, torch.full_like(azimuths, elevation_deg), distance)
    return PerspectiveCameras(c2w, size, size, fov_y_deg=fov_deg)


def turntable_from_mesh(
    mesh: Mesh, n_frames: int, *, size: int = 256, progress: bool = True, fit: bool = True, **camera_options
) -> list[np.ndarray]:
    """Rasterise ``n_frames`` shaded views of a mesh (vertex colours or texture); (size, size, 3) uint8 frames.

    With ``fit`` the mesh's bounding sphere is moved to the origin and scaled to :data:`FIT_RADIUS` first (the
    ``distance`` of ``camera_options`` is then in those units); without it the mesh is rendered where it is.

    Raises:
        ValueError: a mesh with no surface (no faces, or all of zero area): every frame would be blank.
    """
    from .core.mesh_renderer import headlight, render_mesh
    from .core.shading import face_areas

    cameras = turntable_cameras(n_frames, size=size, **camera_options)
    verts = mesh.verts.detach()
    if fit:  # in float64: a mesh in any units (1e20 overflows float32 arithmetic) comes out framed alike
        centre, radius = mesh.bounding_sphere()
        verts = (verts.double() - centre.double()) * (FIT_RADIUS / radius if radius > 0 else 1.0)
    verts = verts.float()
    if not float(face_areas(verts, mesh.faces).sum()) > 0:
        raise ValueError("the mesh has no surface to render (no faces, or all of them of zero area)")
    frames = []
    with torch.inference_mode():
        # Once, not per frame (the mesh stays still, the camera moves); of the framed vertices, as exports write them.
        normals = dataclasses.replace(mesh, verts=verts).vertex_normals
        for i in tqdm(range(n_frames), desc="turntable", unit="frame", disable=not progress):
            out = render_mesh(
                verts,
                mesh.faces,
                cameras[i],
                vertex_colors=mesh.vertex_colors,
                uvs=mesh.uvs,
                texture=mesh.texture,
                normals=normals,
                lights=headlight(cameras[i], **PREVIEW_LIGHTING),
                shading="lambert",
            )
            frames.append(to_uint8(out["rgb"][0].numpy()))
    return frames


def turntable_paths(stem: str | os.PathLike) -> tuple[Path, Path]:
    """The MP4 and GIF of a turntable: ``stem`` + ``.mp4`` / ``.gif`` (a stem with dots keeps them: ``take.v2``
    gives ``take.v2.mp4``)."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".mp4"), stem.with_name(stem.name + ".gif")


def gif_timing(fps: int, n_frames: int) -> tuple[int, list[int]]:
    """(every how many frames the GIF keeps, the delay of each kept frame in milliseconds) of ``n_frames`` at
    ``fps``: GIF delays are whole hundredths of a second, so they alternate (83.3 ms: 80, 90, 80, ...) such that the
    time after each frame is the nearest hundredth to the MP4's, and the whole lasts as long as the MP4. Browsers play
    delays under 2 hundredths as 10: above :data:`GIF_MAX_FPS` frames are dropped, and a short last frame is merged
    into the one before."""
    step = math.ceil(fps / GIF_MAX_FPS)
    ends = [10 * round(100 * min(end, n_frames) / fps) for end in range(step, n_frames + step, step)]
    delays = [end - start for start, end in zip([0, *ends], ends, strict=False)]
    if len(delays) > 1 and delays[-1] < 20:
        delays[-2:] = [delays[-2] + delays[-1]]
    return step, [max(20, delay) for delay in delays]


def save_turntable(frames: list[np.ndarray], stem: str | os.PathLike, fps: int = 24) -> tuple[Path, Path]:
    """Write ``stem.mp4`` (H.264 via imageio-ffmpeg, ``fps``) and ``stem.gif`` (the same duration to the hundredth
    of a second, :func:`gif_timing`) atomically, both or neither (a GIF that fails removes the MP4 just written);
    returns both paths (:func:`turntable_paths`)."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("no frames to save")
    check_int(fps, "fps", *TURNTABLE_FPS_RANGE)
    mp4, gif = turntable_paths(stem)
    with atomic_path(mp4) as tmp:
        # H.264 in yuv420p needs even sides: an odd frame gets its last row / column repeated (the GIF keeps it)
        even = [
            np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge") for frame in frames
        ]
        try:  # ffmpeg quiet: a failure is reported as one line naming the file (ffmpeg's own lines are raw)
            imageio.mimwrite(
                tmp, even, fps=fps, codec="libx264", macro_block_size=1, format="FFMPEG", ffmpeg_log_level="quiet"
            )
        except OSError as err:
            raise _write_error(err, tmp, mp4, "the video encoder (ffmpeg) failed") from None
        if not Path(tmp).stat().st_size:  # ffmpeg reports its failures on stderr only
            raise ValueError(f"ffmpeg wrote no video for {mp4.name}")
    try:
        with atomic_path(gif) as tmp:
            step, delays_ms = gif_timing(fps, len(frames))
            try:
                duration = delays_ms if len(delays_ms) > 1 else delays_ms[0]  # PIL takes a list for 2 frames or more
                imageio.mimwrite(tmp, frames[::step][: len(delays_ms)], duration=duration, loop=0, format="GIF")
            except OSError as err:
                raise _write_error(err, tmp, gif, "the GIF writer failed") from None
    except BaseException:
        mp4.unlink(missing_ok=True)
        raise
    return mp4, gif


#: Free space under which a writer's failure is taken for a full disk (ffmpeg then stops, and its writer reports only
#: the pipe it was fed through: ``[Errno 32] Broken pipe``).
_FULL_DISK_BYTES = 1 << 20


def _write_error(err: OSError, tmp: Path, path: Path, failed: str) -> OSError:
    """A writer's ``err`` (writing ``tmp``, the temporary file of ``path``) as an ``OSError`` naming ``path`` and the
    cause: a full disk (``ENOSPC``), the error's own (``EACCES``), or else ``failed`` and the first line of its
    message."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full:
        try:
            full = shutil.disk_usage(tmp.parent).free < _FULL_DISK_BYTES
        except OSError:
            pass
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if err.errno is not None and err.errno != errno.EPIPE and err.strerror:
        return OSError(err.errno, err.strerror, str(path))
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return OSError(f"cannot write {path}: {failed} ({first_line})")
