"""Fixtures shared by several test files."""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ChromiumRunner = Callable[[list[str], Path], str]


@pytest.fixture(scope="session")
def chromium() -> ChromiumRunner:
    """``run(arguments, folder) -> stdout`` of headless Chromium (``--headless --no-sandbox``, a new profile under
    ``folder`` per attempt, then ``arguments``). The test is skipped where no Chromium is installed.

    An attempt that has not ended after 60 s is killed and tried once more: on a fresh machine headless Chromium 150
    once never ended a page load (a few seconds otherwise); what it draws or prints is never retried.
    """
    path = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if path is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")

    def run(arguments: list[str], folder: Path) -> str:
        def attempt(number: int) -> str:
            command = [path, "--headless", "--no-sandbox", f"--user-data-dir={folder / f'profile{number}'}", *arguments]
            return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout

        try:
            return attempt(1)
        except subprocess.TimeoutExpired:
            return attempt(2)

    return run
