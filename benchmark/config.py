"""YAML loading with one-line errors, and the project's config catalogues."""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path

import yaml

from benchmark.errors import GadbenchError, closest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GadbenchError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""  # a reader error (a forbidden character) has no mark
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise GadbenchError(f"{path}:{where} malformed YAML ({problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GadbenchError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """`override` over a copy of `base`, nested dicts merged key by key (a method's `training:`
    block keeps the keys an override does not name)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def config_hash(value) -> str:
    """A stable short hash of any JSON-able config."""
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_keys(where: str, mapping: dict, allowed: set[str], required: set[str] = frozenset()) -> None:
    for key in mapping:
        if key not in allowed:
            raise GadbenchError(f"{where}: unknown key {key!r}{closest(key, allowed)}")
    for key in required:
        if key not in mapping:
            raise GadbenchError(f"{where}: missing key {key!r}")


def backbone_catalogue() -> dict:
    path = CONFIG_DIR / "backbones.yaml"
    return copy.deepcopy(_parsed_yaml(str(path), path.stat().st_mtime_ns))


@lru_cache(maxsize=8)
def _parsed_yaml(path: str, mtime_ns: int) -> dict:
    """Parsed once per file version: preprocessing() asks for the catalogue in training loops."""
    return load_yaml(path)


def backbone_entry(name: str) -> dict:
    catalogue = backbone_catalogue()
    if name not in catalogue:
        raise GadbenchError(f"configs/backbones.yaml: unknown backbone {name!r}{closest(name, catalogue)}")
    return catalogue[name]
