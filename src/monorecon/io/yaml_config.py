"""YAML for configs: safe loading that rejects a key given twice in one mapping.

``yaml.safe_load`` keeps the last of two equal keys silently, so a stray duplicated line in a hand-edited config
(``model:`` twice, say) would replace a whole section without a word. Exponents without a dot (``1e-4``) are numbers,
as in YAML 1.2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_yaml"]


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<``: merged in by construct_mapping, may repeat
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
# PyYAML follows YAML 1.1, where a float needs a dot: ``lr: 1e-4`` would be the string "1e-4". YAML 1.2 (and every
# other reader) makes it a number; so do configs here.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file like ``yaml.safe_load``, but a key repeated within one mapping is an error.

    Raises:
        ValueError: one line naming the file, the problem and its line (unreadable text, bad syntax, a repeated key).
    """
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # whatever the locale
    except UnicodeDecodeError as error:
        raise ValueError(f"cannot parse YAML {path}: not UTF-8 text ({error.reason})") from error
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"cannot parse YAML {path}: {problem}{where}") from error
