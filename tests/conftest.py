"""Fixtures shared by several test files."""

import shutil

import pytest


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium for headless browser tests; the test is skipped where none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
