"""Camera conventions and transforms, pinned against hand-computed values and independent formulas."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from monorecon.core.cameras import (
    OrthographicCameras,
    PerspectiveCameras,
    WeakPerspectiveCameras,
    fibonacci_sphere,
    look_at,
    orbit_c2w,
    quaternion_to_matrix,
    spherical_to_cartesian,
    triposr_to_world,
    world_to_triposr,
    world_to_z_up,
    z_up_to_world,
)


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_look_at_from_front_is_identity_rotation():
    c2w = look_at(torch.tensor([0.0, 0.0, 3.0]))
    expected = torch.eye(4)
    expected[2, 3] = 3.0
    assert torch.allclose(c2w[0], expected, atol=1e-12)


def test_look_at_from_plus_x_axes():
    c2w = look_at(torch.tensor([2.0, 0.0, 0.0]))[0]
    # Looking down -X with +Y up: image right is -Z, back is +X.
    assert torch.allclose(c2w[:3, 0], torch.tensor([0.0, 0.0, -1.0]), atol=1e-12)
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 1.0, 0.0]), atol=1e-12)
    assert torch.allclose(c2w[:3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-12)


def test_spherical_convention():
    assert torch.allclose(spherical_to_cartesian(0.0, 0.0, 2.0), torch.tensor([0.0, 0.0, 2.0]), atol=1e-12)
    assert torch.allclose(spherical_to_cartesian(90.0, 0.0, 2.0), torch.tensor([2.0, 0.0, 0.0]), atol=1e-12)
    assert torch.allclose(spherical_to_cartesian(0.0, 90.0, 2.0), torch.tensor([0.0, 2.0, 0.0]), atol=1e-12)
    # Overhead orbit cameras are valid rotations.
    c2w = orbit_c2w(torch.tensor([0.0, 45.0]), torch.tensor([90.0, -90.0]), 1.5)
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(2, 3, 3), atol=1e-9)
    assert torch.allclose(c2w[:, :3, 3], torch.tensor([[0.0, 1.5, 0.0], [0.0, -1.5, 0.0]]), atol=1e-9)


@pytest.mark.parametrize("azimuth", [0.0, 45.0, 90.0, 180.0, 290.0])
@pytest.mark.parametrize("pole", [90.0, -90.0])
def test_orbit_cameras_do_not_roll_at_the_poles(azimuth, pole):
    """Through the elevations where the up hint changes (|el| 89.999), the image's up vector moves continuously: it
    matches the camera a hair further from the pole (world +Y as the hint), for any azimuth."""
    sign = math.copysign(1.0, pole)
    near, at = orbit_c2w(azimuth, sign * 89.9989, 2.0), orbit_c2w(azimuth, torch.tensor([sign * 89.9991, pole]), 2.0)
    for c2w in at:
        assert torch.allclose(c2w[:3, 1], near[0, :3, 1], atol=1e-4)  # the image's up (camera +Y) in the world
        assert torch.allclose(c2w[:3, :3].T @ c2w[:3, :3], torch.eye(3), atol=1e-9)


def test_perspective_projection_hand_values():
    # fov 90 on a 100 x 100 image: fy = 50 px; the camera sits at the origin looking down -Z.
    cam = PerspectiveCameras(torch.eye(4), 100, 100, fov_y_deg=90.0)
    pts = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -2.0], [0.0, 0.0, -5.0]])
    screen = cam.transform_points_screen(pts)[0]
    assert torch.allclose(screen[0], torch.tensor([100.0, 50.0, 1.0]))  # right edge
    assert torch.allclose(screen[1], torch.tensor([50.0, 25.0, 2.0]))  # above centre -> smaller v
    assert torch.allclose(screen[2], torch.tensor([50.0, 50.0, 5.0]))
    ndc = cam.transform_points_ndc(pts)[0]
    assert torch.allclose(ndc[:, :2], torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]]))


def test_fov_is_vertical_and_the_axis_meets_the_centre_on_a_wide_image():
    """``fov_y_deg`` spans the image *height* and the principal point is the image centre, also when W != H (square
    images hide both): with focal ``H / 2 / tan(fov / 2)`` by hand, a point on the view axis lands on (W/2, H/2), one
    at ``tan(fov / 2)`` per unit depth above the axis on the top edge, and one as far to the right at W/2 + H/2."""
    height, width, fov = 20, 50, 60.0
    cam = PerspectiveCameras(torch.eye(4), height, width, fov_y_deg=fov)
    slope = math.tan(math.radians(fov / 2))
    pts = torch.tensor([[0.0, 0.0, -3.0], [0.0, 3.0 * slope, -3.0], [3.0 * slope, 0.0, -3.0]])
    screen = cam.transform_points_screen(pts)[0]
    expected = torch.tensor([[25.0, 10.0, 3.0], [25.0, 0.0, 3.0], [35.0, 10.0, 3.0]])
    torch.testing.assert_close(screen, expected, atol=1e-9, rtol=0)
    assert float(cam.focal[0, 0]) == pytest.approx(10.0 / slope)
    # The ray through the top-centre edge point leaves at fov / 2 above the axis.
    _, d_cam = cam.ndc_to_camera_ray(torch.tensor([[[0.0, 1.0]]]))
    assert math.degrees(math.atan2(float(d_cam[0, 0, 1]), -float(d_cam[0, 0, 2]))) == pytest.approx(fov / 2)


def test_projection_matrix_agrees_with_direct_projection():
    torch.manual_seed(0)
    cam = PerspectiveCameras(
        orbit_c2w(30.0, 20.0, 3.0), 48, 64, znear=0.5, zfar=20.0, focal=(70.0, 60.0), principal=(30.0, 25.0)
    )
    pts = torch.randn(20, 3) * 0.5
    direct = cam.transform_points_ndc(pts)[0]
    cam_pts = cam.world_to_camera(pts)[0]
    clip = torch.cat([cam_pts, torch.ones(20, 1)], -1) @ cam.projection_matrix()[0].T
    ndc = clip[:, :3] / clip[:, 3:]
    assert torch.allclose(ndc[:, :2], direct[:, :2], atol=1e-9)
    # OpenGL depth mapping: znear -> -1, zfar -> +1.
    z_near = torch.tensor([0.0, 0.0, -0.5, 1.0]) @ cam.projection_matrix()[0].T
    assert z_near[2] / z_near[3] == pytest.approx(-1.0)


def test_rays_pass_through_pixel_centres():
    cam = PerspectiveCameras(orbit_c2w(torch.tensor([10.0, 200.0]), 25.0, 2.5), 12, 16, fov_y_deg=50.0)
    origins, dirs = cam.get_rays()
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(2, 12, 16))
    pts = origins + 1.3 * dirs
    screen = cam.transform_points_screen(pts.reshape(2, -1, 3)).reshape(2, 12, 16, 3)
    v, u = torch.meshgrid(torch.arange(12) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    assert torch.allclose(screen[..., 0], u.expand(2, -1, -1), atol=1e-9)
    assert torch.allclose(screen[..., 1], v.expand(2, -1, -1), atol=1e-9)
    # Top-left pixel ray goes up and left in camera space.
    _, d_cam = cam.ndc_to_camera_ray(cam.pixel_to_ndc(torch.tensor([[0.5, 0.5]]))[None].expand(2, -1, -1))
    assert d_cam[0, 0, 0] < 0 and d_cam[0, 0, 1] > 0 and d_cam[0, 0, 2] == -1


def test_orthographic_rays_and_projection():
    cam = OrthographicCameras(look_at(torch.tensor([0.0, 0.0, 4.0])), 10, 20, scale=2.0)
    origins, dirs = cam.get_rays()
    assert torch.allclose(dirs, torch.tensor([0.0, 0.0, -1.0]).expand_as(dirs))
    ndc = cam.transform_points_ndc(origins.reshape(1, -1, 3))
    uv = cam.ndc_to_pixel(ndc[..., :2]).reshape(10, 20, 2)
    assert torch.allclose(uv[0, 0], torch.tensor([0.5, 0.5]))
    # Half the image height is 2 world units, the width spans 8.
    assert cam.transform_points_ndc(torch.tensor([[4.0, 2.0, 0.0]]))[0, 0, :2].tolist() == pytest.approx([1.0, 1.0])


def test_resized_cameras_keep_every_pixels_ray():
    pts = torch.tensor([[0.3, -0.2, -2.0], [-0.5, 0.4, -3.0]])
    # Perspective: pixel coordinates scale with the image (hand values: fov 90 -> fy = 50 px on 100 x 100).
    cam = PerspectiveCameras(torch.eye(4), 100, 100, fov_y_deg=90.0)
    small = cam.resized(25, 50)  # a different aspect is still a resampling of the same view
    assert (small.height, small.width) == (25, 50)
    torch.testing.assert_close(small.transform_points_screen(pts)[0, :, :2],
                               cam.transform_points_screen(pts)[0, :, :2] * torch.tensor([0.5, 0.25]))  # fmt: skip
    assert float(small.fov_y_deg[0]) == pytest.approx(90.0)
    shifted = PerspectiveCameras(torch.eye(4), 64, 64, focal=(70.0, 80.0), principal=(30.0, 34.0)).resized(128, 128)
    assert shifted.focal[0].tolist() == [140.0, 160.0] and shifted.principal[0].tolist() == [60.0, 68.0]
    # NDC cameras keep their projection; a change of aspect is refused (it is not the same view).
    ortho = OrthographicCameras(look_at(torch.tensor([0.0, 0.0, 4.0])), 10, 20, scale=2.0)
    torch.testing.assert_close(ortho.resized(5, 10).transform_points_ndc(pts), ortho.transform_points_ndc(pts))
    torch.manual_seed(3)
    weak = WeakPerspectiveCameras(torch.tensor([0.8]), torch.randn(1, 2) * 0.1, torch.randn(1, 4), 32, 32)
    torch.testing.assert_close(weak.resized(64, 64).transform_points_ndc(pts), weak.transform_points_ndc(pts))
    for camera in (ortho, weak):
        with pytest.raises(ValueError, match="aspect"):
            camera.resized(64, 16)
    for camera in (cam, ortho, weak):
        for size in ((0, 0), (-4, -8), (1 << 20, 1 << 20)):
            with pytest.raises(ValueError, match="image height"):
                camera.resized(*size)


def test_quaternion_matches_scipy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(8, 4))
    ours = quaternion_to_matrix(torch.from_numpy(q)).numpy()
    ref = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy: (x, y, z, w)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_weak_perspective_formula_and_rigid_path_agree():
    torch.manual_seed(2)
    s, t, q = torch.tensor([0.8, 1.3]), torch.randn(2, 2) * 0.1, torch.randn(2, 4)
    cam = WeakPerspectiveCameras(s, t, q, 32, 32)
    pts = torch.randn(2, 30, 3)
    got = cam.transform_points_ndc(pts)
    rot = torch.from_numpy(Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix())
    expected = (
        torch.einsum("bij,bnj->bni", rot, pts * s[:, None, None]) + torch.cat([t, torch.zeros(2, 1)], -1)[:, None]
    )
    assert torch.allclose(got[..., :2], expected[..., :2], atol=1e-9)
    # Nearer the viewer (+Z after rotation) means smaller depth.
    order = torch.argsort(got[0, :, 2])
    assert torch.all(expected[0, order, 2][:-1] >= expected[0, order, 2][1:])
    rigid = OrthographicCameras.transform_points_ndc(cam, pts)
    assert torch.allclose(rigid, got, atol=1e-9)


def test_triposr_frame_conversion():
    # TripoSR: z up, the input view's camera at (+1.9, 0, 0), image right = +y.
    cam_t = torch.tensor([1.9, 0.0, 0.0])
    assert torch.allclose(triposr_to_world(cam_t), spherical_to_cartesian(0.0, 0.0, 1.9), atol=1e-12)
    assert torch.allclose(triposr_to_world(torch.tensor([0.0, 0.0, 1.0])), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(triposr_to_world(torch.tensor([0.0, 1.0, 0.0])), torch.tensor([1.0, 0.0, 0.0]))
    m = triposr_to_world(torch.eye(3))
    assert torch.linalg.det(m) == pytest.approx(1.0)  # a rotation: exports are not mirrored
    p = torch.randn(5, 3)
    assert torch.allclose(world_to_triposr(triposr_to_world(p)), p)


def test_z_up_frame_conversion():
    # Blender's view of a glTF scene: our up (+Y) is its +Z, our front (+Z, towards the input camera) its -Y.
    assert torch.allclose(world_to_z_up(torch.tensor([0.0, 1.0, 0.0])), torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(world_to_z_up(torch.tensor([0.0, 0.0, 1.0])), torch.tensor([0.0, -1.0, 0.0]))
    assert torch.allclose(world_to_z_up(torch.tensor([1.0, 0.0, 0.0])), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.linalg.det(world_to_z_up(torch.eye(3))) == pytest.approx(1.0)  # not mirrored
    p = torch.randn(5, 3)
    assert torch.allclose(z_up_to_world(world_to_z_up(p)), p)


def test_fibonacci_sphere_unit_and_spread():
    pts = fibonacci_sphere(64, dtype=torch.float64)
    assert torch.allclose(pts.norm(dim=-1), torch.ones(64))
    assert pts.mean(0).norm() < 0.05
    d = torch.cdist(pts, pts) + torch.eye(64) * 9
    assert d.min() > 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fov_y_deg": 0.0}, "fov_y_deg"),
        ({"fov_y_deg": 180.0}, "fov_y_deg"),
        ({"fov_y_deg": 40.0, "height": 0}, "height"),
        ({"fov_y_deg": 40.0, "width": 10**6}, "width"),
        ({"fov_y_deg": 40.0, "znear": 2.0, "zfar": 1.0}, "znear"),
        ({"focal": (-1.0, 1.0)}, "focal"),
        ({}, "fov_y_deg or focal"),
    ],
)
def test_bad_camera_parameters(kwargs, message):
    args = {"c2w": torch.eye(4), "height": 8, "width": 8} | kwargs
    with pytest.raises(ValueError, match=message):
        PerspectiveCameras(**args)


def test_bad_poses():
    bad = torch.eye(4)
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        PerspectiveCameras(bad, 8, 8, fov_y_deg=40.0)
    with pytest.raises(ValueError, match="orthonormal"):
        PerspectiveCameras(torch.eye(4) * 2, 8, 8, fov_y_deg=40.0)
    with pytest.raises(ValueError, match="shape"):
        PerspectiveCameras(torch.eye(3), 8, 8, fov_y_deg=40.0)
    with pytest.raises(ValueError, match="coincide"):
        look_at(torch.zeros(3))
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([0.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="points"):
        PerspectiveCameras(torch.eye(4), 8, 8, fov_y_deg=40.0).transform_points_ndc(torch.zeros(4, 2))


def test_bad_poses_mirrored_or_not_affine():
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))  # orthonormal, but the image's right is world -X
    with pytest.raises(ValueError, match="mirrors"):
        PerspectiveCameras(mirror, 8, 8, fov_y_deg=40.0)
    junk = torch.eye(4)
    junk[3, 0] = 0.5
    with pytest.raises(ValueError, match="bottom row"):
        PerspectiveCameras(junk, 8, 8, fov_y_deg=40.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda c2w: PerspectiveCameras(c2w, 8, 8, fov_y_deg=torch.tensor([40.0, 50.0, 60.0])), "fov_y_deg"),
        (lambda c2w: PerspectiveCameras(c2w, 8, 8, focal=torch.ones(3, 2)), "focal"),
        (lambda c2w: PerspectiveCameras(c2w, 8, 8, focal=torch.ones(3)), "focal"),
        (lambda c2w: PerspectiveCameras(c2w, 8, 8, fov_y_deg=40.0, principal=torch.ones(3, 2)), "principal"),
        (lambda c2w: OrthographicCameras(c2w, 8, 8, scale=torch.ones(3)), "scale"),
    ],
)
def test_intrinsics_must_give_one_value_or_one_per_camera(make, message):
    c2w = torch.eye(4).expand(2, 4, 4)
    with pytest.raises(ValueError, match=f"{message} must give .* of 2 cameras"):
        make(c2w)


def test_look_at_shapes():
    eyes = torch.tensor([[0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"eye must have shape \(3,\) or \(B, 3\)"):
        look_at(eyes.reshape(6))  # a flat vector is not two cameras
    with pytest.raises(ValueError, match=r"eye must have shape"):
        look_at(torch.ones(2, 4))
    with pytest.raises(ValueError, match="target has 3 rows for 2 cameras"):
        look_at(eyes, torch.zeros(3, 3))
    both = look_at(eyes, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(both[1], look_at(eyes[1], torch.tensor([0.0, 0.0, 1.0]))[0])


def test_camera_indexing_follows_python():
    c2w = orbit_c2w(torch.tensor([0.0, 90.0, 180.0]), 0.0, 3.0)
    for cameras in (
        PerspectiveCameras(c2w, 8, 8, fov_y_deg=torch.tensor([30.0, 40.0, 50.0])),
        OrthographicCameras(c2w, 8, 8, scale=torch.tensor([1.0, 2.0, 3.0])),
    ):
        last = cameras[-1]
        assert last.batch_size == 1
        torch.testing.assert_close(last.c2w[0], c2w[2])
        torch.testing.assert_close(cameras[-3].c2w[0], c2w[0])
        for index in (3, -4):
            with pytest.raises(IndexError, match="out of range for 3 cameras"):
                cameras[index]
    np.testing.assert_allclose(
        PerspectiveCameras(c2w, 8, 8, fov_y_deg=torch.tensor([30.0, 40.0, 50.0]))[-1].fov_y_deg, [50.0]
    )
    weak = WeakPerspectiveCameras(torch.tensor([1.0, 2.0]), torch.zeros(2, 2), torch.tensor([[1.0, 0, 0, 0]] * 2), 8, 8)
    assert float(weak[-1].weak_scale) == 2.0


def test_orbit_keeps_float64_and_is_differentiable():
    torch.set_default_dtype(torch.float32)  # numbers are float32: tensors given in float64 stay float64
    azimuth = torch.tensor([20.0, 110.0], dtype=torch.float64, requires_grad=True)
    assert spherical_to_cartesian(azimuth, 10.0, 2.0).dtype == torch.float64
    assert orbit_c2w(azimuth, 10.0, 2.0).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda az: orbit_c2w(az, 10.0, 2.0), (azimuth,))


def test_points_take_the_cameras_dtype():
    cameras = PerspectiveCameras(torch.eye(4, dtype=torch.float32), 8, 8, fov_y_deg=40.0)
    points = torch.tensor([[0.1, 0.2, -2.0]], dtype=torch.float64)
    ndc = cameras.transform_points_ndc(points)
    assert ndc.dtype == torch.float32
    np.testing.assert_allclose(
        ndc[0, 0, :2], [0.1 / 2 / math.tan(math.radians(20)), 0.2 / 2 / math.tan(math.radians(20))], rtol=1e-6
    )


def test_weak_perspective_far_plane_follows_the_scale():
    """A mesh in millimetres (s = 0.002 fills the image) lies about depth_offset / s = 5000 units from the camera:
    the soft renderer must still show it (it showed the background past a fixed far plane of 1020)."""
    from monorecon.core.mesh_renderer import render_mesh

    verts = torch.tensor([[-400.0, -400.0, 0.0], [400.0, -400.0, 0.0], [0.0, 400.0, 0.0]])
    faces = torch.tensor([[0, 1, 2]])
    cameras = WeakPerspectiveCameras(torch.tensor([0.002]), torch.zeros(1, 2), torch.tensor([[1.0, 0, 0, 0]]), 16, 16)
    colors = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    for soft in (False, True):
        out = render_mesh(verts, faces, cameras, vertex_colors=colors, soft=soft, shading="unlit")
        np.testing.assert_allclose(out["rgb"][0, 8, 8], [0.0, 0.0, 1.0], atol=1e-3, err_msg=f"soft={soft}")
