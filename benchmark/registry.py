"""Adapter registry: name -> "module:Class", imported only when used.

A method outside the package needs no registry line: pass "my_module:MyAdapter" (importable from
the working directory or PYTHONPATH) or "path/to/file.py:MyAdapter" wherever a name is accepted.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from benchmark.api import Adapter
from benchmark.errors import GadbenchError, closest

ADAPTERS: dict[str, str] = {
    "normal_nn": "nagl.normal_nn:NormalNNAdapter",
    "patchcore": "baselines.patchcore:PatchCoreAdapter",
    "winclip": "baselines.winclip:WinCLIPAdapter",
    "nagl": "nagl.adapter:NAGLAdapter",
    "nn_ablation": "nagl.ablation:NNAblationAdapter",
    "inctrl": "baselines.inctrl:InCTRLAdapter",
    "resad": "baselines.resad:ResADAdapter",
}


def _import_module(module_name: str):
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise GadbenchError(f"{module_name}: adapter file not found")
        spec = importlib.util.spec_from_file_location(f"gadbench_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # let `--adapter my_module:Cls` find ./my_module.py
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise GadbenchError(f"adapter module {module_name!r} not found; check the name or PYTHONPATH") from None
        raise


def resolve(spec: str) -> type[Adapter]:
    """A registered name or 'module:Class' / 'file.py:Class' -> the adapter class."""
    target = ADAPTERS.get(spec, spec)
    if ":" not in target:
        raise GadbenchError(f"unknown adapter {spec!r}{closest(spec, ADAPTERS)} (or pass module:Class)")
    module_name, _, class_name = target.rpartition(":")
    module = _import_module(module_name)
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        names = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Adapter)]
        raise GadbenchError(f"{module_name} has no class {class_name!r}{closest(class_name, names)}") from None
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise GadbenchError(f"{target} is not a subclass of benchmark.adapter.Adapter")
    return cls


def known() -> list[str]:
    return sorted(ADAPTERS)
