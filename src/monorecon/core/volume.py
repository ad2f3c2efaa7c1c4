"""Differentiable volume rendering of radiance fields along rays (TripoSR and G3DR conventions).

Rays are ``x(t) = o + t d``; ``t`` is in units of ``|d|``: the Euclidean distance for unit directions, the camera depth
for unit-depth directions (``Cameras.get_rays(normalize=False)``). Rendered ``depth`` is this ``t``.

Each ray is clipped to an axis-aligned box; samples ``t_i`` are placed in ``[t_near, t_far]``. Every sample stands for
the interval whose edges lie halfway between it and its neighbours (``t_near`` / ``t_far`` at the ends), so for
TripoSR's scheme (samples at the midpoints of equal bins) the intervals are exactly the bins. Compositing (NeRF
quadrature, as TripoSR and G3DR): ``alpha_i = 1 - exp(-sigma_i delta_i)``,
``T_i = prod_{j<i} (1 - alpha_j + 1e-10)``, ``w_i = alpha_i T_i``, ``rgb = sum w_i c_i + (1 - sum w_i) background``,
``depth = sum w_i t_i / (sum w_i + 1e-3)``. ``delta_i`` is the world length of the interval, or with TripoSR's
``normalized_delta`` quirk the interval length divided by the ray's in-box length (1 / n_samples for uniform bins).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .checks import NonFiniteError, check_tensor

__all__ = [
    "DepthKernel",
    "DepthRegularization",
    "FieldFn",
    "VolumeRenderConfig",
    "VolumeRenderer",
    "composite",
    "depth_regularize",
    "depth_window_samples",
    "distortion_loss",
    "importance_samples",
    "ray_aabb",
    "uniform_samples",
]

FieldFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``field_fn(points (N, 3)) -> (density (N, 1), rgb (N, 3))``, points in the caller's frame."""

_MAX_SAMPLES = 1 << 16
_MAX_CHUNK = 1 << 24
_AUTO_CHUNK_POINTS_CPU = 1 << 14
_AUTO_CHUNK_POINTS_GPU = 1 << 20
# TripoSR replaces direction components below this magnitude (its directions are unit vectors) to avoid dividing by
# zero in the slab test; here it is relative to the direction's length, so any length gives the same segment.
_MIN_DIRECTION_COMPONENT = 1e-6
_PER_SAMPLE_KEYS = ("weights", "t", "edges")  # returned only with ``return_weights``


# --------------------------------------------------------------------------------------------------------------------
# Ray / box intersection and sample placement
# --------------------------------------------------------------------------------------------------------------------
def _box_tensor(value: Sequence[float] | torch.Tensor, name: str, like: torch.Tensor) -> torch.Tensor:
    box = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return check_tensor(box.reshape(-1) if box.numel() == 3 else box, name, (3,))


def ray_aabb(
    origins: torch.Tensor,
    directions: torch.Tensor,
    box_min: Sequence[float] | torch.Tensor,
    box_max: Sequence[float] | torch.Tensor,
    *,
    shrink: float = 0.0,
    near_min: float = 0.0,
    min_length: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segment of each ray inside an axis-aligned box (slab test).

    Args:
        origins, directions: (…, 3) rays ``o + t d``.
        box_min, box_max: (3,) box corners.
        shrink: the box is scaled about its centre by ``1 - shrink`` first (TripoSR: 1e-3).
        near_min: ``t_near`` is clamped to at least this (0: nothing behind the origin).
        min_length: rays whose in-box segment is not longer than this miss (TripoSR: 0.01).

    Returns:
        t_near, t_far: (…) segment ends in units of ``|d|`` (0 for misses); hit: (…) bool.
    """
    origins = check_tensor(origins, "origins", floating=True)
    directions = check_tensor(directions, "directions", floating=True)
    if origins.shape != directions.shape or origins.shape[-1:] != (3,):
        raise ValueError(f"origins and directions must both be (..., 3), got {tuple(origins.shape)}, "
                         f"{tuple(directions.shape)}")  # fmt: skip
    lo, hi = _box_tensor(box_min, "box_min", origins), _box_tensor(box_max, "box_max", origins)
    if not bool((lo < hi).all()):
        raise ValueError(f"box_min must be below box_max on every axis, got {lo.tolist()} and {hi.tolist()}")
    if not 0.0 <= shrink < 1.0:
        raise ValueError(f"shrink must lie in [0, 1), got {shrink}")
    center = (lo + hi) / 2
    lo, hi = center + (lo - center) * (1.0 - shrink), center + (hi - center) * (1.0 - shrink)
    tiny = (_MIN_DIRECTION_COMPONENT * directions.norm(dim=-1, keepdim=True)).clamp_min(
        torch.finfo(directions.dtype).tiny
    )
    safe = torch.where(directions.abs() < tiny, tiny, directions)
    t_hi, t_lo = (hi - origins) / safe, (lo - origins) / safe
    t_near = torch.minimum(t_hi, t_lo).amax(dim=-1).clamp_min(near_min)
    t_far = torch.maximum(t_hi, t_lo).amin(dim=-1)
    hit = t_far - t_near > min_length
    zero = torch.zeros((), dtype=t_near.dtype, device=t_near.device)
    return torch.where(hit, t_near, zero), torch.where(hit, t_far, zero), hit


def _check_count(n: int, name: str, minimum: int = 1) -> int:
    if int(n) != n or not minimum <= n <= _MAX_SAMPLES:
        raise ValueError(f"{name} must be an integer in [{minimum}, {_MAX_SAMPLES}], got {n}")
    return int(n)


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's own device and returned on ``device``: a CPU generator (as
    training uses, for samples that do not depend on the device) also serves CUDA tensors."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=dtype, device=source).to(device)


def _lerp(t_near: torch.Tensor, t_far: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    # Same form as TripoSR (near * (1 - u) + far * u), so sample positions agree to the last bit.
    return t_near[:, None] * (1 - u) + t_far[:, None] * u


def uniform_samples(
    t_near: torch.Tensor,
    t_far: torch.Tensor,
    n: int,
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` equal bins per ray between ``t_near`` and ``t_far``.

    Args:
        t_near, t_far: (R,) segment ends.
        n: number of bins (>= 1).
        stratified: one uniform random sample inside each bin instead of the bin midpoint.
        generator: random source for ``stratified``.

    Returns:
        edges: (R, n + 1) bin edges; samples: (R, n) midpoints (or stratified samples), increasing along each ray.
    """
    t_near = check_tensor(t_near, "t_near", (None,), floating=True)
    t_far = check_tensor(t_far, "t_far", (t_near.shape[0],), floating=True)
    n = _check_count(n, "n")
    edges_u = torch.linspace(0.0, 1.0, n + 1, dtype=t_near.dtype, device=t_near.device)
    if stratified:
        jitter = _uniform((t_near.shape[0], n), generator, dtype=t_near.dtype, device=t_near.device)
        u = edges_u[:-1] + (edges_u[1:] - edges_u[:-1]) * jitter
    else:
        u = ((edges_u[:-1] + edges_u[1:]) / 2.0).expand(t_near.shape[0], n)
    return _lerp(t_near, t_far, edges_u.expand(t_near.shape[0], n + 1)), _lerp(t_near, t_far, u)


def importance_samples(
    bin_edges: torch.Tensor,
    weights: torch.Tensor,
    n: int,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    *,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inverse-CDF sampling of the piecewise-constant PDF given by ``weights`` over the bins (NeRF fine samples).

    The PDF of bin ``k`` is proportional to ``weights[k] + 1e-5`` (the small floor keeps empty rays sampled).

    Args:
        bin_edges: (R, M + 1) increasing bin edges.
        weights: (R, M) non-negative bin weights (detached here: samples carry no gradient).
        n: number of samples (>= 1).
        deterministic: use the quantiles ``(k + 0.5) / n`` instead of random numbers.
        generator: random source otherwise.
        uniforms: (R, n) numbers in [0, 1) to use instead (e.g. drawn for all rays at once); overrides the above.

    Returns:
        (R, n) samples, sorted along each ray.
    """
    bin_edges = check_tensor(bin_edges, "bin_edges", (None, None), floating=True).detach()
    n_rays, n_bins = bin_edges.shape[0], bin_edges.shape[1] - 1
    if n_bins < 1:
        raise ValueError("bin_edges needs at least 2 edges per ray")
    weights = check_tensor(weights, "weights", (n_rays, n_bins), floating=True).detach()
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    n = _check_count(n, "n")
    like = dict(dtype=bin_edges.dtype, device=bin_edges.device)
    if uniforms is not None:
        u = check_tensor(uniforms, "uniforms", (n_rays, n), floating=True).detach().to(**like)
        if bool(((u < 0) | (u > 1)).any()):
            raise ValueError("uniforms must lie in [0, 1]")
        u = u.sort(dim=-1).values
    elif deterministic:
        u = ((torch.arange(n, **like) + 0.5) / n).expand(n_rays, n)
    else:
        u = _uniform((n_rays, n), generator, **like).sort(dim=-1).values
    pdf = weights.to(**like) + 1e-5
    cdf = torch.cumsum(pdf / pdf.sum(dim=-1, keepdim=True), dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf[:, :-1], torch.ones_like(cdf[:, :1])], dim=-1)
    upper = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(1, n_bins)
    lower = upper - 1
    cdf_lo, cdf_hi = cdf.gather(1, lower), cdf.gather(1, upper)
    edge_lo, edge_hi = bin_edges.gather(1, lower), bin_edges.gather(1, upper)
    span = cdf_hi - cdf_lo
    frac = ((u - cdf_lo) / torch.where(span > 0, span, torch.ones_like(span))).clamp(0, 1)
    return edge_lo + frac * (edge_hi - edge_lo)


def depth_window_samples(target_depth: torch.Tensor, n: int, half_width: float = 0.05) -> torch.Tensor:
    """G3DR's fixed fine samples around a known depth: ``D + linspace(-half_width, half_width, n)``.

    Args:
        target_depth: (R,) depth ``D`` per ray (same units as the ray parameter ``t``).

    Returns:
        (R, n) samples, increasing.
    """
    target_depth = check_tensor(target_depth, "target_depth", (None,), floating=True)
    n = _check_count(n, "n")
    if not half_width >= 0:
        raise ValueError(f"half_width must be >= 0, got {half_width}")
    offsets = torch.linspace(-half_width, half_width, n, dtype=target_depth.dtype, device=target_depth.device)
    return target_depth[:, None] + offsets


# --------------------------------------------------------------------------------------------------------------------
# Depth-guided gradient scaling (G3DR)
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DepthKernel:
    """G3DR's gradient scale ``k(t, D) = clamp(scale * exp(-(t - D)^2 / width), k_min, k_max)``."""

    scale: float = 1.25
    width: float = 0.03
    k_min: float = 0.05
    k_max: float = 1.0

    def __post_init__(self) -> None:
        if not (self.width > 0 and self.scale > 0 and 0 <= self.k_min <= self.k_max):
            raise ValueError(f"invalid depth kernel {self}: need width > 0, scale > 0, 0 <= k_min <= k_max")

    def __call__(self, t: torch.Tensor, target_depth: torch.Tensor) -> torch.Tensor:
        """(R, S) sample depths and (R,) target depths -> (R, S) gradient scales (no gradient)."""
        t, target_depth = t.detach(), target_depth.detach()
        return (self.scale * torch.exp(-((t - target_depth[:, None]) ** 2) / self.width)).clamp(self.k_min, self.k_max)


class DepthRegularization(torch.autograd.Function):
    """Identity on per-sample ``alpha`` (R, S) and ``rgb`` (R, S, 3) whose backward multiplies their gradients by
    ``k`` (R, S) (e.g. :class:`DepthKernel`): samples far from the expected surface learn less (G3DR)."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, rgb: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(k)
        return alpha.clone(), rgb.clone()

    @staticmethod
    def backward(ctx, grad_alpha: torch.Tensor, grad_rgb: torch.Tensor):
        (k,) = ctx.saved_tensors
        return grad_alpha * k, grad_rgb * k[..., None], None


def depth_regularize(
    alpha: torch.Tensor,
    rgb: torch.Tensor,
    t: torch.Tensor,
    target_depth: torch.Tensor,
    kernel: DepthKernel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply :class:`DepthRegularization` with ``k = kernel(t, target_depth)``.

    Args:
        alpha: (R, S) per-sample opacities; rgb: (R, S, 3) colours; t: (R, S) sample depths;
        target_depth: (R,) pseudo ground-truth depth per ray; kernel: default ``DepthKernel()`` (G3DR values).

    Returns:
        (alpha, rgb) unchanged in value, with scaled gradients.
    """
    sizes: dict[str, int] = {}
    check_tensor(alpha, "alpha", ("R", "S"), sizes=sizes, floating=True)
    check_tensor(rgb, "rgb", ("R", "S", 3), sizes=sizes, floating=True)
    check_tensor(t, "t", ("R", "S"), sizes=sizes, floating=True)
    check_tensor(target_depth, "target_depth", ("R",), sizes=sizes, floating=True)
    return DepthRegularization.apply(alpha, rgb, (kernel or DepthKernel())(t, target_depth))


# --------------------------------------------------------------------------------------------------------------------
# Compositing
# --------------------------------------------------------------------------------------------------------------------
def _composite(
    sigma: torch.Tensor,
    rgb: torch.Tensor,
    t: torch.Tensor,
    deltas: torch.Tensor,
    background: torch.Tensor,
    depth_eps: float,
    transmittance_eps: float,
    target_depth: torch.Tensor | None = None,
    kernel: DepthKernel | None = None,
) -> dict[str, torch.Tensor]:
    alpha = 1.0 - torch.exp(-sigma * deltas)
    if target_depth is not None:
        alpha, rgb = DepthRegularization.apply(alpha, rgb, (kernel or DepthKernel())(t, target_depth))
    survive = torch.cumprod(1.0 - alpha + transmittance_eps, dim=-1)
    transmittance = torch.cat([torch.ones_like(alpha[:, :1]), survive[:, :-1]], dim=-1)
    weights = alpha * transmittance
    opacity = weights.sum(dim=-1, keepdim=True)
    color = torch.bmm(weights[:, None, :], rgb).squeeze(1) + (1.0 - opacity) * background
    depth = (weights * t).sum(dim=-1, keepdim=True) / (opacity + depth_eps)
    return {"rgb": color, "opacity": opacity, "depth": depth, "weights": weights}


def composite(
    density: torch.Tensor,
    rgb: torch.Tensor,
    t_mid: torch.Tensor,
    deltas: torch.Tensor,
    background: torch.Tensor,
    *,
    depth_eps: float = 1e-3,
    transmittance_eps: float = 1e-10,
    target_depth: torch.Tensor | None = None,
    depth_kernel: DepthKernel | None = None,
) -> dict[str, torch.Tensor]:
    """Alpha-composite samples front to back (formulas in the module docstring).

    Args:
        density: (R, S, 1) or (R, S) volume densities ``sigma >= 0``.
        rgb: (R, S, 3) colours.
        t_mid: (R, S) sample depths (used for the rendered depth and the depth regulariser).
        deltas: (R, S) interval lengths ``delta``.
        background: (3,) or (R, 3) colour behind the volume.
        depth_eps: added to the opacity when normalising the depth.
        transmittance_eps: added to ``1 - alpha`` in the transmittance product (as TripoSR and G3DR).
        target_depth: (R,) depths; if given, gradients of alpha and colour are scaled by ``depth_kernel``.
        depth_kernel: default ``DepthKernel()``.

    Returns:
        dict(rgb (R, 3), opacity (R, 1), depth (R, 1), weights (R, S)); differentiable w.r.t. all inputs.
    """
    sizes: dict[str, int] = {}
    density = check_tensor(density, "density", floating=True)
    if density.dim() == 3:
        density = check_tensor(density, "density", ("R", "S", 1), sizes=sizes)[..., 0]
    check_tensor(density, "density", ("R", "S"), sizes=sizes)
    check_tensor(rgb, "rgb", ("R", "S", 3), sizes=sizes, floating=True)
    check_tensor(t_mid, "t_mid", ("R", "S"), sizes=sizes, floating=True)
    check_tensor(deltas, "deltas", ("R", "S"), sizes=sizes, floating=True)
    background = check_tensor(background, "background", floating=True)
    if background.shape not in ((3,), (sizes["R"], 3)):
        raise ValueError(f"background must have shape (3,) or ({sizes['R']}, 3), got {tuple(background.shape)}")
    if bool((density < 0).any()) or bool((deltas < 0).any()):
        raise ValueError("density and deltas must be non-negative")
    if target_depth is not None:
        check_tensor(target_depth, "target_depth", ("R",), sizes=sizes, floating=True)
    return _composite(density, rgb, t_mid, deltas, background, depth_eps, transmittance_eps, target_depth, depth_kernel)


def distortion_loss(weights: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Mip-NeRF 360's distortion loss of each ray: small when its weights sit in one short interval (a surface), large
    when they are spread along the ray (haze, floaters).

    ``L = sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (e_{i+1} - e_i)`` with ``m_i`` the interval midpoints, computed
    in O(S) from prefix sums (the double sum is ``2 sum_i w_i sum_{j<i} w_j (m_i - m_j)`` for sorted midpoints).

    Args:
        weights: (R, S) compositing weights.
        edges: (R, S + 1) ascending interval edges of the samples, e.g. the renderer's ``edges`` (fractions of the
            in-box segment, as Mip-NeRF 360's normalised distance).

    Returns:
        (R,) loss per ray; differentiable w.r.t. ``weights``.
    """
    weights = check_tensor(weights, "weights", ("R", "S"), floating=True)
    n_rays, n_samples = weights.shape
    edges = check_tensor(edges, "edges", (n_rays, n_samples + 1), floating=True)
    mids, widths = 0.5 * (edges[:, 1:] + edges[:, :-1]), torch.diff(edges, dim=-1)
    if bool((widths < 0).any()):
        raise ValueError("edges must be ascending along each ray")
    weight_before = torch.cumsum(weights, dim=-1) - weights
    moment_before = torch.cumsum(weights * mids, dim=-1) - weights * mids
    between = 2.0 * (weights * (mids * weight_before - moment_before)).sum(dim=-1)
    within = (weights**2 * widths).sum(dim=-1) / 3.0
    return between + within


# --------------------------------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class VolumeRenderConfig:
    """Settings of :class:`VolumeRenderer`. Defaults follow TripoSR except ``normalized_delta`` (see :meth:`triposr`).

    Attributes:
        n_samples: coarse samples per ray (bins between the clipped near and far).
        n_importance: extra fine samples per ray: inverse-CDF on the coarse weights after a 2-tap max + 2-tap mean
            blur (as EG3D / G3DR), or G3DR's depth window. Fine samples carry no gradient w.r.t. their positions.
        stratified: coarse samples jittered inside their bins (training) instead of bin midpoints.
        deterministic_importance: fine samples at fixed CDF quantiles instead of random ones.
        box_radius: the box is the cube ``[-r, r]^3`` unless ``box_min`` / ``box_max`` are given.
        box_min, box_max: explicit box corners (both or neither).
        near_far_shrink: box scaled about its centre by ``1 - near_far_shrink`` before clipping (TripoSR 1e-3).
        near_min: samples start at ``t >= near_min`` (0: not behind the ray origin).
        min_ray_length: rays whose in-box segment is not longer than this are misses (TripoSR 0.01).
        normalized_delta: TripoSR quirk: ``delta`` = interval length / in-box length (1 / n_samples) instead of the
            world length, i.e. densities are per box-crossing rather than per world unit.
        background: colour of missed rays and behind the volume.
        chunk_size: rays rendered at once (memory ~ chunk_size x (n_samples + n_importance) field queries). None:
            about 16k field queries per chunk on CPU (keeps MLP activations in cache; measured fastest, see
            benchmarks/bench_volume.py) and 1M on GPU.
        depth_eps, transmittance_eps: see :func:`composite`.
        depth_window_probability: with a ``target_depth``, probability (per render call) that the fine samples are
            ``D + linspace(-w, w, n_importance)`` instead of importance samples (G3DR 0.4).
        depth_window_half_width: ``w`` above (G3DR 0.05).
        depth_kernel: gradient scaling applied when ``target_depth`` is given.
        return_weights: also return per-sample ``weights`` and depths ``t`` (…, S), and the samples' interval
            ``edges`` (…, S + 1) as fractions of the ray's in-box segment (for :func:`distortion_loss`).
    """

    n_samples: int = 128
    n_importance: int = 0
    stratified: bool = False
    deterministic_importance: bool = False
    box_radius: float = 0.87
    box_min: tuple[float, float, float] | None = None
    box_max: tuple[float, float, float] | None = None
    near_far_shrink: float = 1e-3
    near_min: float = 0.0
    min_ray_length: float = 0.01
    normalized_delta: bool = False
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    chunk_size: int | None = None
    depth_eps: float = 1e-3
    transmittance_eps: float = 1e-10
    depth_window_probability: float = 0.0
    depth_window_half_width: float = 0.05
    depth_kernel: DepthKernel = field(default_factory=DepthKernel)
    return_weights: bool = False

    def __post_init__(self) -> None:
        _check_count(self.n_samples, "n_samples")
        _check_count(self.n_importance, "n_importance", minimum=0)
        if self.chunk_size is not None and (
            int(self.chunk_size) != self.chunk_size or not 1 <= self.chunk_size <= _MAX_CHUNK
        ):
            raise ValueError(f"chunk_size must be an integer in [1, {_MAX_CHUNK}] rays, got {self.chunk_size}")
        if (self.box_min is None) != (self.box_max is None):
            raise ValueError("give both box_min and box_max, or neither")
        if self.box_min is None and not (math.isfinite(self.box_radius) and self.box_radius > 0):
            raise ValueError(f"box_radius must be positive and finite, got {self.box_radius}")
        lo, hi = self.box_bounds
        if len(lo) != 3 or len(hi) != 3 or not all(math.isfinite(v) for v in lo + hi):
            raise ValueError(f"box_min / box_max must be 3 finite numbers, got {self.box_min}, {self.box_max}")
        if not all(a < b for a, b in zip(lo, hi, strict=True)):
            raise ValueError(f"box_min must be below box_max on every axis, got {lo} and {hi}")
        if not 0.0 <= self.near_far_shrink < 1.0:
            raise ValueError(f"near_far_shrink must lie in [0, 1), got {self.near_far_shrink}")
        for name in ("near_min", "min_ray_length", "depth_eps", "transmittance_eps", "depth_window_half_width"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not 0.0 <= self.depth_window_probability <= 1.0:
            raise ValueError(f"depth_window_probability must lie in [0, 1], got {self.depth_window_probability}")
        background = tuple(float(v) for v in self.background)
        if len(background) != 3 or not all(math.isfinite(v) for v in background):
            raise ValueError(f"background must be 3 finite numbers, got {self.background}")
        self.background = background

    @property
    def box_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(box_min, box_max) actually used: the explicit corners, else the cube of ``box_radius``."""
        if self.box_min is None or self.box_max is None:
            return (-float(self.box_radius),) * 3, (float(self.box_radius),) * 3
        return tuple(float(v) for v in self.box_min), tuple(float(v) for v in self.box_max)

    @classmethod
    def triposr(cls, **overrides) -> VolumeRenderConfig:
        """TripoSR's renderer: box [-0.87, 0.87]^3 shrunk by 1e-3, rays shorter than 0.01 dropped, 128 bin
        midpoints, ``delta = 1 / 128``, white background."""
        settings = dict(
            n_samples=128, box_radius=0.87, near_far_shrink=1e-3, min_ray_length=0.01, normalized_delta=True,
            background=(1.0, 1.0, 1.0),
        )  # fmt: skip
        return cls(**{**settings, **overrides})

    @classmethod
    def g3dr(cls, **overrides) -> VolumeRenderConfig:
        """G3DR-like settings: box [-1, 1]^3, 32 stratified + 32 fine samples, 40 % depth-window fine samples, world
        deltas, black background. (G3DR composites interval midpoints of its samples; here samples are composited
        directly, with the same alpha / transmittance / depth formulas.)"""
        settings = dict(
            n_samples=32, n_importance=32, stratified=True, box_radius=1.0, near_far_shrink=0.0, min_ray_length=0.0,
            background=(0.0, 0.0, 0.0), depth_window_probability=0.4,
        )  # fmt: skip
        return cls(**{**settings, **overrides})


def _blur_weights(weights: torch.Tensor) -> torch.Tensor:
    """(R, S) -> (R, S): 2-tap max then 2-tap mean (EG3D / mip-NeRF). Spreads each weight onto the neighbouring
    intervals, so fine samples also cover the gap between the last empty and the first occupied coarse sample."""
    padded = torch.cat([weights[:, :1], weights, weights[:, -1:]], dim=-1)
    peak = torch.maximum(padded[:, :-1], padded[:, 1:])
    return 0.5 * (peak[:, :-1] + peak[:, 1:])


def _interval_edges(u: torch.Tensor) -> torch.Tensor:
    """(R, S) increasing positions in [0, 1] -> (R, S + 1) edges: 0, midpoints between neighbours, 1."""
    inner = (u[:, 1:] + u[:, :-1]) / 2.0
    return torch.cat([torch.zeros_like(u[:, :1]), inner, torch.ones_like(u[:, :1])], dim=-1)


class VolumeRenderer:
    """Chunked, differentiable volume renderer of a field given as a function of points.

    Sample positions are handled as fractions ``u`` in [0, 1] of each ray's in-box segment, ``t = near (1 - u) +
    far u``. Random numbers (stratified jitter, importance uniforms, the depth-window draw) are drawn for all rays
    before chunking, so ``chunk_size`` never changes the result.
    """

    def __init__(self, config: VolumeRenderConfig | None = None) -> None:
        self.config = config if config is not None else VolumeRenderConfig()
        if not isinstance(self.config, VolumeRenderConfig):
            raise ValueError(f"config must be a VolumeRenderConfig, got {type(self.config).__name__}")

    def auto_chunk_size(self, device: torch.device) -> int:
        """Rays per chunk when ``config.chunk_size`` is None."""
        points = _AUTO_CHUNK_POINTS_CPU if device.type == "cpu" else _AUTO_CHUNK_POINTS_GPU
        return max(1, points // (self.config.n_samples + self.config.n_importance))

    def __call__(self, field_fn: FieldFn, origins: torch.Tensor, directions: torch.Tensor, **kwargs):
        return self.render(field_fn, origins, directions, **kwargs)

    def render(
        self,
        field_fn: FieldFn,
        origins: torch.Tensor,
        directions: torch.Tensor,
        target_depth: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        background: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Render rays through a field.

        Args:
            field_fn: ``points (N, 3) -> (density (N, 1), rgb (N, 3))``; densities >= 0.
            origins, directions: (…, 3) rays (any non-zero direction length; ``t`` and depth in its units).
            target_depth: (…,) pseudo ground-truth depth per ray: enables the depth-guided gradient scaling (and the
                depth-window fine samples if ``depth_window_probability > 0``).
            generator: random source for stratified / importance sampling.
            background: (3,) or (…, 3) colour overriding ``config.background``.

        Returns:
            dict(rgb (…, 3), opacity (…, 1), depth (…, 1)) and, with ``return_weights``, weights (…, S), t (…, S)
            and edges (…, S + 1) (S = n_samples + n_importance). Missed rays: background colour, opacity 0, depth 0,
            weights 0, edges 0.
        """
        cfg = self.config
        origins = check_tensor(origins, "origins", floating=True)
        directions = check_tensor(directions, "directions", floating=True)
        if origins.shape != directions.shape or origins.shape[-1:] != (3,):
            raise ValueError(f"origins and directions must both be (..., 3), got {tuple(origins.shape)}, "
                             f"{tuple(directions.shape)}")  # fmt: skip
        ray_shape = origins.shape[:-1]
        rays_o, rays_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
        n_rays, like = rays_o.shape[0], dict(dtype=rays_o.dtype, device=rays_o.device)
        if bool((rays_d.norm(dim=-1) < 1e-12).any()):
            raise ValueError("directions contain zero-length vectors")
        if target_depth is not None:
            target_depth = check_tensor(target_depth, "target_depth", floating=True)
            if target_depth.shape not in (ray_shape, (*ray_shape, 1)):
                raise ValueError(f"target_depth must have shape {tuple(ray_shape)}, got {tuple(target_depth.shape)}")
            target_depth = target_depth.reshape(-1).to(**like)
        if background is None:
            bg = torch.tensor(cfg.background, **like)
        else:
            bg = self._background(background, ray_shape).to(**like)

        t_near, t_far, hit = ray_aabb(
            rays_o, rays_d, *cfg.box_bounds,
            shrink=cfg.near_far_shrink, near_min=cfg.near_min, min_length=cfg.min_ray_length,
        )  # fmt: skip
        hit_index = hit.nonzero().squeeze(1)
        n_hit = hit_index.numel()

        # All random numbers up front (chunk-size invariance).
        coarse_u = uniform_samples(
            torch.zeros(n_hit if cfg.stratified else 1, **like), torch.ones(n_hit if cfg.stratified else 1, **like),
            cfg.n_samples, cfg.stratified, generator,
        )[1]  # fmt: skip
        use_window = (
            cfg.n_importance > 0
            and target_depth is not None
            and cfg.depth_window_probability > 0
            and float(_uniform((), generator, **like)) < cfg.depth_window_probability
        )
        fine_uniforms = None
        if cfg.n_importance > 0 and not use_window and not cfg.deterministic_importance:
            fine_uniforms = _uniform((n_hit, cfg.n_importance), generator, **like)

        pieces: dict[str, list[torch.Tensor]] = {}
        chunk_size = cfg.chunk_size or self.auto_chunk_size(rays_o.device)
        for start in range(0, n_hit, chunk_size):
            rows = slice(start, start + chunk_size)
            index = hit_index[rows]
            chunk = self._render_chunk(
                field_fn, rays_o[index], rays_d[index], t_near[index], t_far[index],
                coarse_u[rows] if cfg.stratified else coarse_u.expand(index.numel(), -1),
                None if fine_uniforms is None else fine_uniforms[rows],
                None if target_depth is None else target_depth[index],
                bg[index] if bg.dim() == 2 else bg, use_window,
            )  # fmt: skip
            for key, value in chunk.items():
                if cfg.return_weights or key not in _PER_SAMPLE_KEYS:
                    pieces.setdefault(key, []).append(value)

        n_total = cfg.n_samples + cfg.n_importance
        missed = {
            "rgb": bg.expand(n_rays, 3),
            "opacity": torch.zeros(n_rays, 1, **like),
            "depth": torch.zeros(n_rays, 1, **like),
            "weights": torch.zeros(n_rays, n_total, **like),
            "t": torch.zeros(n_rays, n_total, **like),
            "edges": torch.zeros(n_rays, n_total + 1, **like),
        }
        result = {}
        for key, full in missed.items():
            if key in _PER_SAMPLE_KEYS and not cfg.return_weights:
                continue
            value = full.contiguous()
            if n_hit:
                value = value.index_copy(0, hit_index, torch.cat(pieces[key], dim=0).to(value.dtype))
            result[key] = value.reshape(*ray_shape, value.shape[-1])
        return result

    @staticmethod
    def _background(background: torch.Tensor, ray_shape: torch.Size) -> torch.Tensor:
        background = check_tensor(background, "background", floating=True)
        if background.shape == (3,):
            return background
        if background.shape != (*ray_shape, 3):
            raise ValueError(f"background must have shape (3,) or {(*ray_shape, 3)}, got {tuple(background.shape)}")
        return background.reshape(-1, 3)

    def _query(self, field_fn: FieldFn, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, S, 3) points -> density (R, S), rgb (R, S, 3)."""
        n_rays, n_samples = points.shape[:2]
        out = field_fn(points.reshape(-1, 3))
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise ValueError("field_fn must return a (density, rgb) pair")
        density, rgb = out
        n_points = n_rays * n_samples
        if not isinstance(density, torch.Tensor) or density.shape not in ((n_points, 1), (n_points,)):
            got = tuple(density.shape) if isinstance(density, torch.Tensor) else type(density).__name__
            raise ValueError(f"field_fn density must have shape ({n_points}, 1), got {got}")
        if not isinstance(rgb, torch.Tensor) or rgb.shape != (n_points, 3):
            got = tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
            raise ValueError(f"field_fn rgb must have shape ({n_points}, 3), got {got}")
        if bool(density.isnan().any()):
            raise NonFiniteError("field_fn returned NaN densities")
        if not bool((density >= 0).all()):
            raise ValueError("field_fn returned negative densities")
        return density.reshape(n_rays, n_samples), rgb.reshape(n_rays, n_samples, 3)

    def _render_chunk(
        self,
        field_fn: FieldFn,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        t_near: torch.Tensor,
        t_far: torch.Tensor,
        coarse_u: torch.Tensor,
        fine_uniforms: torch.Tensor | None,
        target_depth: torch.Tensor | None,
        background: torch.Tensor,
        use_window: bool,
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        # Length of an interval du: in units of the in-box segment (TripoSR quirk) or in world units.
        delta_scale = 1.0 if cfg.normalized_delta else ((t_far - t_near) * rays_d.norm(dim=-1))[:, None]

        def points_at(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            t = _lerp(t_near, t_far, u)
            return t, rays_o[:, None, :] + t[..., None] * rays_d[:, None, :]

        def deltas_of(u: torch.Tensor) -> torch.Tensor:
            return torch.diff(_interval_edges(u), dim=-1) * delta_scale

        u = coarse_u
        t, points = points_at(u)
        sigma, rgb = self._query(field_fn, points)
        if cfg.n_importance > 0:
            if use_window:
                window = depth_window_samples(target_depth, cfg.n_importance, cfg.depth_window_half_width)
                fine_u = ((window - t_near[:, None]) / (t_far - t_near)[:, None]).clamp(0.0, 1.0).detach()
            else:
                with torch.no_grad():
                    coarse = _composite(sigma, rgb, t, deltas_of(u), background, cfg.depth_eps, cfg.transmittance_eps)
                    # Quantiles unless random numbers were drawn up front (deterministic_importance off).
                    fine_u = importance_samples(
                        _interval_edges(u), _blur_weights(coarse["weights"]), cfg.n_importance, deterministic=True,
                        uniforms=fine_uniforms,
                    )  # fmt: skip
            fine_sigma, fine_rgb = self._query(field_fn, points_at(fine_u)[1])
            u, order = torch.sort(torch.cat([u, fine_u], dim=-1), dim=-1)
            sigma = torch.cat([sigma, fine_sigma], dim=-1).gather(1, order)
            rgb = torch.cat([rgb, fine_rgb], dim=1).gather(1, order[..., None].expand(-1, -1, 3))
            t = _lerp(t_near, t_far, u)
        out = _composite(
            sigma, rgb, t, deltas_of(u), background, cfg.depth_eps, cfg.transmittance_eps,
            target_depth, cfg.depth_kernel,
        )  # fmt: skip
        out["t"], out["edges"] = t, _interval_edges(u)
        return out
