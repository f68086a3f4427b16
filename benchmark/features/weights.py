"""Local weight files: find them, verify their sha256, load them safely (weights_only=True).

Nothing here reaches the network unless the store was made with allow_download=True.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.api.tensor_files import load_tensors
from benchmark.errors import GadbenchError, MissingWeights
from benchmark.data.images import file_sha256

RANDOM = "random"  # the sha256 recorded for randomly initialised weights
RANDOM_INIT_SEED = 0  # random weights are always these: a result never depends on what ran before
LOCK_FILE = "SHA256SUMS"  # in the weights folder: each file's sha256 as first used


@dataclass
class WeightFile:
    """One expected file: what it is called, what it must hash to, where a user gets it."""

    name: str  # catalogue key, e.g. lite0_imagenet
    file: str
    sha256: str | None = None
    # releases that name files by their hash (torchvision, open_clip): the sha256 must start with it
    sha256_prefix: str | None = None
    url: str | None = None
    pypi_package: str | None = None
    key_map: str = "none"
    get: str = ""

    @property
    def expected(self) -> str:
        return self.sha256 or (f"{self.sha256_prefix}..." if self.sha256_prefix else "not pinned")

    def matches(self, actual: str) -> bool:
        if self.sha256:
            return actual == self.sha256
        return actual.startswith(self.sha256_prefix) if self.sha256_prefix else True

    @classmethod
    def from_config(cls, name: str, config: dict) -> "WeightFile":
        known = {"file", "sha256", "sha256_prefix", "url", "pypi_package", "key_map", "get"}
        unknown = set(config) - known
        if unknown:
            raise GadbenchError(f"weights for {name!r}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        if "file" not in config:
            raise GadbenchError(f"weights for {name!r}: missing key 'file'")
        return cls(name=name, **config)


@contextlib.contextmanager
def fixed_random_init(seed: int = RANDOM_INIT_SEED):
    """Build random-weight models inside this: the same weights in every process and cell, so that
    features cached under the 'random' key, parallel runs and reruns all agree. The caller's RNG
    state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class WeightStore:
    def __init__(self, weights_dir: str | Path | None = None, allow_download: bool = False):
        self.dir = Path(weights_dir or os.environ.get("GADBENCH_WEIGHTS") or "weights").resolve()
        self.allow_download = allow_download

    def candidate_path(self, weight: WeightFile) -> Path:
        local = self.dir / weight.file
        if local.exists() or not weight.pypi_package:
            return local
        module = weight.pypi_package.replace("-", "_")
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            return local
        found = list(Path(spec.origin).parent.rglob(weight.file))
        return found[0] if found else local

    def status(self, weight: WeightFile) -> dict:
        """What `gadbench weights` prints for one file."""
        path = self.candidate_path(weight)
        row = {"weights": weight.name, "file": weight.file, "path": str(path), "present": path.is_file(),
               "expected_sha256": weight.expected, "valid": False, "get": weight.url or weight.get or ""}
        if row["present"]:
            actual = file_sha256(str(path))
            row["actual_sha256"] = actual
            recorded = self.recorded().get(weight.file)
            row["valid"] = weight.matches(actual) and recorded in (None, actual)
            if recorded and not weight.sha256:
                row["expected_sha256"] = f"{recorded} (recorded on first use)"
        return row

    def resolve(self, weight: WeightFile) -> tuple[Path, str]:
        """The verified file and its sha256, or a one-line error saying how to get it."""
        path = self.candidate_path(weight)
        if not path.is_file():
            if self.allow_download and weight.url:
                path = self._download(weight)
            else:
                how = f"download it from {weight.url}" if weight.url else (weight.get or "see configs/backbones.yaml")
                raise MissingWeights(
                    f"weights file {weight.file} for {weight.name!r} not found at {path}; {how} into {self.dir}"
                    + (" (or pass --allow-download)" if weight.url else "")
                )
        actual = file_sha256(str(path))
        if not weight.matches(actual):
            raise GadbenchError(
                f"{path}: sha256 {actual[:16]}... does not match the expected {weight.expected[:16]}... for {weight.name!r};"
                " the file is corrupt or a different release: download it again"
            )
        self._check_first_use(weight, path, actual)
        return path, actual

    @property
    def lock_file(self) -> Path:
        return self.dir / LOCK_FILE

    def recorded(self) -> dict[str, str]:
        """file name -> sha256 recorded on first use (sha256sum's format)."""
        if not self.lock_file.is_file():
            return {}
        lines = (line.split(maxsplit=1) for line in self.lock_file.read_text().splitlines() if line.strip())
        return {name.strip(): digest for digest, name in lines}

    def _check_first_use(self, weight: WeightFile, path: Path, actual: str) -> None:
        """Catalogue hashes come from the release (a full sha256, or the prefix in the file name); files
        whose source publishes none (DINOv2, timm's safetensors) would otherwise go unchecked. Every
        file's full sha256 is recorded in <weights dir>/SHA256SUMS on first use, and a different
        file under that name is refused afterwards."""
        recorded = self.recorded()
        if weight.file in recorded:
            if recorded[weight.file] != actual:
                raise GadbenchError(
                    f"{path}: sha256 {actual[:16]}... differs from {recorded[weight.file][:16]}... recorded on first use in"
                    f" {self.lock_file}; restore the original file, or delete its line there to accept this one on purpose")
            return
        if path.parent != self.dir:  # inside an installed package (pinned in the catalogue): nothing to record here
            return
        from benchmark.api.atomic import write_text

        recorded[weight.file] = actual
        write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(recorded.items())), self.lock_file)

    def _download(self, weight: WeightFile) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / weight.file
        try:
            torch.hub.download_url_to_file(weight.url, str(target), progress=True)  # writes a temp file, then renames
        except Exception as error:  # URLError, HTTPError, OSError: all mean "not downloaded"
            raise GadbenchError(f"downloading {weight.url} failed ({type(error).__name__}: {error}); download it by hand into {self.dir}") from None
        return target

    def load_state_dict(self, weight: WeightFile) -> tuple[dict, str]:
        path, sha256 = self.resolve(weight)
        remedy = f"delete it and download it again{f' from {weight.url}' if weight.url else ''}"
        if path.suffix == ".safetensors":  # timm / Hugging Face releases
            from safetensors.torch import load_file

            try:
                return load_file(str(path)), sha256
            except Exception as error:  # header or size errors: an unusable file
                raise GadbenchError(f"{path}: not a safetensors file ({type(error).__name__}); {remedy}") from None
        state = load_tensors(path, remedy)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        return state, sha256


# ----------------------------------------------------------------------------- key maps
def lukemelas_to_timm_efficientnet(state: dict, stage_depths: list[int]) -> dict:
    """lukemelas-style EfficientNet names (_conv_stem, _blocks.i._depthwise_conv, ...) -> timm's
    (conv_stem, blocks.s.b.conv_dw, ...). The flat block index i is split into (stage, block) by
    the timm model's own stage depths. Stage 0 holds depthwise-separable blocks, the rest
    inverted-residual blocks, and the two kinds name their layers differently in timm."""
    flat = [(stage, block) for stage, depth in enumerate(stage_depths) for block in range(depth)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    out = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if block:
            stage, index = flat[int(block[1])]
            table = separable if stage == 0 else inverted
            out[f"blocks.{stage}.{index}.{table[block[2]]}.{block[3]}"] = value
        else:
            layer, param = key.split(".", 1)
            out[f"{top[layer]}.{param}"] = value
    return out
