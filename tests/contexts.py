"""Run contexts for tests that build an adapter by hand (unit tests of one method's parts); the
harness itself opens methods through benchmark/run/session.py:open_method."""

from __future__ import annotations

import torch

from benchmark.api import RunContext
from benchmark.data.class_names import class_name


def run_context(device=torch.device("cpu"), weights=None, features=None, workdir=None) -> RunContext:
    return RunContext(device=device, weights=weights, features=features, workdir=workdir, class_name=class_name)
