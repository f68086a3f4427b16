"""What every result row records about where it came from."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata

from benchmark.config import PROJECT_ROOT

PACKAGES = ["gadbench", "torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "pandas", "pillow"]


@lru_cache(maxsize=1)
def git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit != "unknown" else None
    return {"git_commit": commit, "git_dirty": dirty}


@lru_cache(maxsize=1)
def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
