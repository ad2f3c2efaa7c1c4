"""Fixtures shared by several test files."""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ChromiumRunner = Callable[[list[str], Path], str]


@pytest.fixture(scope="session")
def chromium() -> ChromiumRunner:
    """``run(arguments, folder) -> stdout`` of headless Chromium (``--headless --no-sandbox``, a new profile under
    ``folder`` per attempt, then ``arguments``). The test is skipped where no Chromium is installed.

    An attempt that has not ended after 60 s is killed and tried again, up to three attempts: on a fresh machine
    headless Chromium 150 once never ended a page load (a few seconds otherwise), and in session 34 two attempts in
    a row hung once in four full runs; what it draws or prints is never retried.
    """
    path = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if path is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")

    def run(arguments: list[str], folder: Path) -> str:
        def attempt(number: int) -> str:
            command = [path, "--headless", "--no-sandbox", f"--user-data-dir={folder / f'profile{number}'}", *arguments]
            return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout

        for number in (1, 2):
            try:
                return attempt(number)
            except subprocess.TimeoutExpired:
                pass
        return attempt(3)

    return run


def screenshot(
    chromium: ChromiumRunner, page: Path, width: int, height: int, folder: Path, arguments: tuple[str, ...] = ()
) -> np.ndarray:
    """(height, width, 3) float RGB in [0, 1] of ``page`` drawn by headless Chromium in a ``width`` x ``height``
    window (software WebGL, one device pixel per CSS pixel; ``arguments``: more Chromium switches)."""
    shot = folder / "shot.png"
    chromium(
        [
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--force-device-scale-factor=1",
            f"--window-size={width},{height}", "--virtual-time-budget=5000",
            # Without it a busy machine sometimes got the screenshot before the (iframe's) first frame: 4 blank of 20.
            "--run-all-compositor-stages-before-draw", f"--screenshot={shot}", *arguments, page.as_uri(),
        ],
        folder,
    )  # fmt: skip
    return np.asarray(Image.open(shot).convert("RGB"))[:height, :width].astype(np.float32) / 255


@pytest.fixture(autouse=True)
def _autograd_left_on():
    """A test that leaves autograd off (a script's ``torch.set_grad_enabled(False)``) fails itself instead of every
    gradient test after it."""
    import torch

    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("the test left autograd disabled (torch.set_grad_enabled(False))")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A synthetic dataset of 2 objects (a mug and a chair), 2 views of 32x32 each: copy it before damaging it."""
    from monorecon.data import synthesize_dataset

    root = tmp_path_factory.mktemp("synth") / "tiny"
    return synthesize_dataset(root, n_objects=2, n_views=2, size=32, seed=3, progress=False)
