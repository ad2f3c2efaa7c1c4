"""Reading JSON files that hold one object (dataset indexes, camera files, ``result.json``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json_object"]


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object stored in ``path`` (UTF-8).

    Raises:
        ValueError: one line naming the file: missing, unreadable, not UTF-8, not JSON (or nested too deeply to
            parse), or JSON that is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data
