"""Reading tensor files (checkpoints, feature-cache entries, weights) safely: torch.load with
weights_only=True, and a file that is not a plain tensor file refused in one line that names it
and says what to do. torch's own message for such a file advises `weights_only=False`, which
would run whatever the file holds: it is never shown."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark.errors import GadbenchError


def load_tensors(path: str | Path, remedy: str):
    """The objects of a tensor file (tensors and plain containers of them), or a GadbenchError:
    `remedy` is what the user should do (delete it, download it again)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # the kind is kept, torch's message (with its weights_only=False advice) is not
        if "Unsupported global" in str(error):  # weights_only refused an object the file would build
            why = "it would build Python objects beyond tensors, which are never loaded"
        else:
            why = f"it cannot be read ({type(error).__name__})"
        raise GadbenchError(f"{path}: not a plain tensor file, {why}; {remedy}") from None
