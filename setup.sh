#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment with monorecon (editable) and its pinned dependencies, plus the
# Khronos glTF validator used by the tests (skipped if npm is absent). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
if command -v npm >/dev/null 2>&1 && [ -f tools/gltf-validator/package-lock.json ]; then
  npm ci --silent --no-audit --no-fund --prefix tools/gltf-validator >/dev/null
fi
echo "monorecon is set up: .venv/bin/monorecon --help"
