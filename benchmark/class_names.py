"""Readable object names for text prompts (configs/class_names.yaml)."""

from __future__ import annotations

import re
from functools import lru_cache

from benchmark.config import CONFIG_DIR, load_yaml


@lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    return {str(k): str(v) for k, v in load_yaml(CONFIG_DIR / "class_names.yaml").items()}


def class_name(category: str) -> str:
    """pcb1 -> 'printed circuit board'; an unknown folder name -> its words without trailing digits."""
    if category in _table():
        return _table()[category]
    return re.sub(r"\d+$", "", category).replace("_", " ").strip() or category
