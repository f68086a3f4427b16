"""User-facing errors: one line that names the file or key and what to do."""

import difflib
from typing import Iterable


class GadbenchError(Exception):
    """An error caused by input (data, config, weights); the CLI prints it as one line."""


def closest(name: str, known: Iterable[str], n: int = 3) -> str:
    """A 'did you mean' suffix for an unknown name."""
    known = sorted(set(known))
    matches = difflib.get_close_matches(name, known, n=n, cutoff=0.4)
    if matches:
        return f"; did you mean {', '.join(repr(m) for m in matches)}?"
    return f"; known: {', '.join(known)}" if known else ""


class MissingWeights(GadbenchError):
    """A weight file is not in the weights folder: the cells that need it are skipped, not failed."""
