"""``monorecon.io.yaml_config.load_yaml`` on hand-written YAML files: repeated keys, YAML 1.2 exponents, one-line
errors naming the file, UTF-8 whatever the locale, and no change to PyYAML's own loaders."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monorecon.io import yaml_config
from monorecon.io.yaml_config import load_yaml


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_key_repeated_in_a_block_mapping_names_file_key_and_line(tmp_path):
    # Line 4 repeats the top-level "model" (first given on line 1): the whole first section would be lost.
    path = _write(tmp_path, "model:\n  width: 8\nname: run\nmodel:\n  depth: 2\n")
    with pytest.raises(ValueError) as caught:
        load_yaml(path)
    assert str(caught.value) == f"cannot parse YAML {path}: found the key 'model' twice (line 4)"
    # Nested: "lr" on lines 2 and 5 of the "optim" section.
    path = _write(tmp_path, "optim:\n  lr: 1\n  steps: 3\n  # a comment\n  lr: 2\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: found the key 'lr' twice (line 5)")):
        load_yaml(path)
    # Integer keys and flow mappings too; the same key in two different mappings is no repeat.
    with pytest.raises(ValueError, match=r"found the key 3 twice \(line 2\)"):
        load_yaml(_write(tmp_path, "a: {b: 1}\nc: {3: x, 3: y}\n"))
    assert load_yaml(_write(tmp_path, "a: {k: 1}\nb: {k: 2}\nk: 3\n")) == {"a": {"k": 1}, "b": {"k": 2}, "k": 3}


def test_merge_keys_may_repeat_and_explicit_keys_override_them(tmp_path):
    text = "base: &b {x: 1, y: 2}\nmore: &m {z: 3}\nuse:\n  <<: *b\n  <<: *m\n  y: 9\n"
    assert load_yaml(_write(tmp_path, text)) == {
        "base": {"x": 1, "y": 2},
        "more": {"z": 3},
        "use": {"x": 1, "y": 9, "z": 3},
    }


def test_exponents_without_a_dot_are_floats_as_in_yaml_1_2(tmp_path):
    text = "a: 1e-4\nb: -2E+3\nc: +3e2\nd: 5e0\nq: '1e-4'\nt: 1e5x\nu: e5\nv: 1e\nw: 1.5e-3\ni: 12\nr: 2024-05\n"
    data = load_yaml(_write(tmp_path, text))
    assert data == {
        "a": 0.0001,
        "b": -2000.0,
        "c": 300.0,
        "d": 5.0,
        "q": "1e-4",
        "t": "1e5x",
        "u": "e5",
        "v": "1e",
        "w": 0.0015,
        "i": 12,
        "r": "2024-05",  # no exponent letter: text
    }
    assert all(type(data[k]) is float for k in "abcdw") and type(data["i"]) is int


def test_pyyamls_own_loaders_are_left_as_they_were():
    """The stricter loader is a subclass: importing it must not change ``yaml.safe_load`` for everyone else."""
    assert yaml.safe_load("lr: 1e-4\n") == {"lr": "1e-4"}  # YAML 1.1 reading, as PyYAML documents
    assert yaml.safe_load("a: 1\na: 2\n") == {"a": 2}


def test_syntax_errors_are_one_line_naming_file_problem_and_line(tmp_path):
    path = _write(tmp_path, "a: 1\nb: 2\n\tc: 3\n")  # a tab cannot start a token: line 3
    with pytest.raises(ValueError) as caught:
        load_yaml(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message == f"cannot parse YAML {path}: found character '\\t' that cannot start any token (line 3)"
    path = _write(tmp_path, "a: [1, 2\nb: 3\n")
    with pytest.raises(ValueError, match=re.escape(f"cannot parse YAML {path}: ")) as caught:
        load_yaml(path)
    assert "\n" not in str(caught.value)


def test_text_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"cannot parse YAML {path}: not UTF-8 text")):
        load_yaml(path)


def test_utf8_configs_read_the_same_under_a_non_utf8_locale(tmp_path):
    """A config with non-ASCII text is UTF-8 whatever the user's locale (a plain C locale reads ASCII by default)."""
    path = tmp_path / "u.yaml"
    path.write_bytes("name: caf\xe9\n".encode())
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "PYTHONUTF8": "0",
        "PYTHONCOERCECLOCALE": "0",
    }
    # The module alone (it needs only PyYAML), not the whole package: a fast subprocess.
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('yc', sys.argv[1]); m = u.module_from_spec(s); "
        "s.loader.exec_module(m); print(ascii(m.load_yaml(sys.argv[2])))"
    )
    module = yaml_config.__file__
    result = subprocess.run([sys.executable, "-c", code, module, str(path)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ascii({"name": "caf\xe9"})
