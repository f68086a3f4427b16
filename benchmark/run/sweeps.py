"""Method variants an experiment file sweeps: `{use: nagl, sweep: {proxies: [5, 25, 50]}}` (or an
inline method with `sweep:`) becomes one method per value, or per combination of values when
several keys are swept. A key is a config key, dotted for a nested one (`training.learning_rate`).
Each variant is a method of its own: its name (`nagl@proxies=5`) names its result and checkpoint
folders, its config its cell key and checkpoint identity, and its label says what it changes."""

from __future__ import annotations

import copy
import dataclasses
import itertools

from benchmark.errors import GadbenchError


def with_value(config: dict, key: str, value) -> dict:
    """A copy of `config` with the dotted `key` set to `value`."""
    out = copy.deepcopy(config)
    *parents, last = key.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise GadbenchError(f"sweep key {key!r}: {part!r} is not a mapping in the method's config")
    node[last] = value
    return out


def _shown(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def expand(method, sweep: dict, where: str) -> list:
    """The variants of `method` (a MethodSpec), one per combination of the swept values, in order."""
    if not isinstance(sweep, dict) or not sweep:
        raise GadbenchError(f"{where}: method {method.name!r}: sweep is a mapping of config keys to lists of values")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise GadbenchError(f"{where}: method {method.name!r}: sweep {key!r} needs a non-empty list of values")
    keys = list(sweep)
    variants = []
    for combination in itertools.product(*(sweep[key] for key in keys)):
        config = method.config
        for key, value in zip(keys, combination):
            config = with_value(config, key, value)
        suffix = ",".join(f"{key}={_shown(value)}" for key, value in zip(keys, combination))
        variants.append(dataclasses.replace(method, name=f"{method.name}@{suffix}", label=f"{method.label}, {suffix}",
                                            config=config))
    return variants
