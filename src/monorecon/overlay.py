"""A mesh drawn over the image it was reconstructed from, seen by the camera ``result.json`` records.

``monorecon reconstruct`` writes, beside each mesh, the input camera in the mesh's own frame (after any placement):
``camera`` for ``input.png`` and ``photo_camera`` for the whole photo (:func:`monorecon.api.camera_record`). Drawing
the mesh with one of them over its image shows how the reconstruction lines up with what the photo shows: the
rasterised mesh (lit by a light at the eye, as turntables are) blended over the image, and its outline.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .core.cameras import PerspectiveCameras
from .core.mesh import Mesh
from .io.images import to_uint8
from .video import PREVIEW_LIGHTING

#: Colour of the mesh's outline (a green that stands out on most photos).
OUTLINE_COLOUR = (0.15, 1.0, 0.35)

#: Largest accepted ``max_side`` of an overlay (the rasteriser's memory grows with the pixel count).
MAX_OVERLAY_SIDE = 4096


def overlay_mesh(
    mesh: Mesh,
    image: np.ndarray,
    camera: PerspectiveCameras,
    *,
    opacity: float = 0.6,
    outline: bool = True,
    max_side: int = 1024,
) -> np.ndarray:
    """Draw ``mesh`` as ``camera`` sees it over ``image``.

    Args:
        mesh: the mesh, in the frame of ``camera`` (vertex colours or a texture; white without either).
        image: (H, W, 3|4) image, float in [0, 1] or uint8, the camera's image or a resized copy of it (the
            camera's aspect ratio: the camera is resized with it); for ``result.json``'s ``photo_camera``, the photo
            upright as :func:`monorecon.io.images.load_image` reads it; an RGBA image is first put on white.
        camera: one perspective camera.
        opacity: share of the shaded mesh in the blend, in [0, 1] (1: the mesh hides the image).
        outline: also draw the mesh's outline (one pixel, :data:`OUTLINE_COLOUR`, opaque).
        max_side: the overlay's longer side at most this many pixels (the image is downsampled, the camera resized
            with it); in [16, :data:`MAX_OVERLAY_SIDE`].

    Returns:
        (h, w, 3) uint8 overlay, ``(h, w)`` the image's size scaled to ``max_side`` (unchanged when smaller).

    Raises:
        ValueError: an image of another aspect ratio than the camera's, not finite or outside [0, 1]; a batch of
            cameras; a bad ``opacity`` or ``max_side``; a mesh entirely behind the camera.
    """
    from .core.checks import check_int
    from .core.mesh_renderer import headlight, render_mesh

    image = np.asarray(image)
    image = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"the image must be (H, W, 3|4), got shape {image.shape}")
    if not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1):
        raise ValueError("the image's values must be finite and lie in [0, 1]")
    if camera.batch_size != 1:
        raise ValueError(f"overlay_mesh draws one camera's view, got {camera.batch_size}")
    if image.shape[:2] != (camera.height, camera.width):  # a resized copy of the camera's image: resize the camera
        try:
            camera.check_same_aspect(*image.shape[:2])
        except ValueError:
            raise ValueError(
                f"the image is {image.shape[1]} x {image.shape[0]} pixels but the camera's is {camera.width} x "
                f"{camera.height}: not the camera's image nor a resized copy of it (another aspect ratio)"
            ) from None
        camera = camera.resized(*image.shape[:2])
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    check_int(max_side, "max_side", 16, MAX_OVERLAY_SIDE)
    if image.shape[2] == 4:  # on white, as viewers show transparency
        image = image[..., :3] * image[..., 3:] + (1 - image[..., 3:])

    height, width = camera.height, camera.width
    zoom = min(1.0, max_side / max(height, width))
    if zoom < 1:
        height, width = max(1, round(height * zoom)), max(1, round(width * zoom))
        image = np.asarray(Image.fromarray(to_uint8(image)).resize((width, height), Image.LANCZOS), np.float32) / 255
        camera = camera.resized(height, width)
    verts = mesh.verts.detach().float()
    # Clipping depths from the mesh itself: a mesh placed 1 mm tall is seen from nearer than the default near plane.
    w2c = torch.linalg.inv(camera.c2w[0])
    depth = -(verts @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
    if not bool((depth > 0).any()):
        raise ValueError("the mesh lies entirely behind the camera")
    far = float(depth.max())
    near = max(float(depth[depth > 0].min()) * 0.5, far * 1e-6)
    camera = PerspectiveCameras(
        camera.c2w, height, width, near, far * 2, focal=camera.focal, principal=camera.principal
    )
    with torch.inference_mode():
        drawn = render_mesh(
            verts,
            mesh.faces,
            camera,
            vertex_colors=mesh.vertex_colors,
            uvs=mesh.uvs,
            texture=mesh.texture,
            lights=headlight(camera, **PREVIEW_LIGHTING),
            shading="lambert",
        )
    rgb = drawn["rgb"][0].clamp(0, 1).numpy()
    covered = (drawn["face_index"][0] >= 0).numpy()
    weight = opacity * covered[..., None]
    out = image * (1 - weight) + rgb * weight
    if outline:
        out[_outline(covered)] = OUTLINE_COLOUR
    return to_uint8(out)


def _outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of ``mask`` with a 4-neighbour outside it (the image border is no edge: the mesh may go
    on beyond it)."""
    padded = np.pad(mask, 1, mode="edge")
    inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inside
