"""Frozen-backbone features on disk: one file per (backbone, image content, preprocessing).

Layout: <root>/<backbone digest>/backbone.json (what the folder holds) and
<root>/<backbone digest>/<2 hex>/<entry digest>.pt, a list of float32 [C, h, w] maps saved with
torch.save and read back with weights_only=True. The backbone digest covers the backbone name,
its weights sha256 and its layers; the entry digest covers the image's sha256 and the
preprocessing key. Entries are written to a private temporary file and renamed into place, so two
processes writing the same entry both succeed and a reader sees a whole file or none.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from benchmark.api.atomic import atomic_file, write_text
from benchmark.api.tensor_files import load_tensors
from benchmark.errors import GadbenchError


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class DiskFeatureCache:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def folder(self, backbone_id: str) -> Path:
        return self.root / _digest(backbone_id)[:24]

    def path(self, backbone_id: str, key: str) -> Path:
        entry = _digest(key)
        return self.folder(backbone_id) / entry[:2] / f"{entry}.pt"

    def get(self, backbone_id: str, key: str) -> list[torch.Tensor] | None:
        path = self.path(backbone_id, key)
        if not path.exists():
            return None
        levels = load_tensors(path, "delete it (`gadbench cache clear`) to compute it again")
        if not (isinstance(levels, list) and all(isinstance(t, torch.Tensor) for t in levels)):
            raise GadbenchError(f"{path}: not a feature-cache entry (a list of tensors);"
                                " delete it (`gadbench cache clear`) to compute it again")
        return levels

    def put(self, backbone_id: str, key: str, levels: list[torch.Tensor]) -> None:
        path = self.path(backbone_id, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        description = path.parent.parent / "backbone.json"
        try:
            if not description.exists():
                write_text(json.dumps({"backbone": backbone_id}) + "\n", description)
            with atomic_file(path) as temporary:
                torch.save([level.contiguous().clone() for level in levels], temporary)
        except OSError:  # the cache is an optimisation: a failed write (disk full) costs a recompute later
            pass

    def info(self) -> list[dict]:
        """One row per backbone folder: entries, bytes, and stray temporary files."""
        rows = []
        if not self.root.exists():
            return rows
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            entries = temporaries = size = 0
            for file in folder.rglob("*"):
                if file.is_file() and file.suffix == ".pt":
                    entries += 1
                    size += file.stat().st_size
                elif file.is_file() and file.suffix == ".tmp":
                    temporaries += 1
            try:
                backbone = json.loads((folder / "backbone.json").read_text())["backbone"]
            except (OSError, ValueError, KeyError):
                backbone = "(unknown)"
            rows.append({"backbone": backbone, "folder": folder.name, "entries": entries, "bytes": size,
                         "temporary_files": temporaries})
        return rows

    def clear(self) -> int:
        """Remove every entry; returns how many entry files there were."""
        count = sum(row["entries"] for row in self.info())
        if self.root.exists():
            shutil.rmtree(self.root)
        return count
