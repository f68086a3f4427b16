"""Readable object names for text prompts (configs/class_names.yaml)."""

from __future__ import annotations

import re
from functools import lru_cache

from benchmark.config import CONFIG_DIR, load_yaml


@lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    return {str(k): str(v) for k, v in load_yaml(CONFIG_DIR / "class_names.yaml").items()}


STYLES = ("readable", "raw", "underscores")


def class_name(category: str, style: str = "readable") -> str:
    """The object name a text prompt uses for a category folder, by style:
    readable     configs/class_names.yaml (pcb1 -> 'printed circuit board'); an unknown folder
                 name -> its words without trailing digits
    raw          the folder name as it is (anomalib's WinCLIP)
    underscores  the folder name with '_' as spaces (InCTRL's code: type.replace('_', ' '))"""
    if style == "raw":
        return category
    if style == "underscores":
        return category.replace("_", " ")
    if style != "readable":
        raise ValueError(f"class_names must be one of {', '.join(STYLES)}, not {style!r}")
    if category in _table():
        return _table()[category]
    return re.sub(r"\d+$", "", category).replace("_", " ").strip() or category
