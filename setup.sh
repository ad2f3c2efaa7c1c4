#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment with monorecon (editable) and its pinned dependencies, plus the
# Node packages the tests run on exported glTF files: the Khronos validator and three.js (skipped if npm is
# absent). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
if command -v npm >/dev/null 2>&1 && [ -f tools/gltf/package-lock.json ]; then
  npm ci --silent --no-audit --no-fund --prefix tools/gltf >/dev/null
fi
echo "monorecon is set up: .venv/bin/monorecon --help"
