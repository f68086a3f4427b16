"""tools/mutation_summary.py: mutmut's per-mutant lines counted per file."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("mutation_summary", Path(__file__).parents[1] / "tools" / "mutation_summary.py")
summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summary)


def test_mutants_are_counted_per_file_and_the_rate_is_killed_over_all():
    lines = ["    nagl.model.x_f__mutmut_1: killed", "    nagl.model.xǁNAGLǁforward__mutmut_2: survived",
             "    nagl.model.x_g__mutmut_3: killed", "    benchmark.run.metrics.x_auroc__mutmut_1: no tests", ""]
    per_file = summary.summarise(lines)
    assert dict(per_file["nagl/model.py"]) == {"killed": 2, "survived": 1}
    assert dict(per_file["benchmark/run/metrics.py"]) == {"no tests": 1}
    rendered = summary.table(per_file).splitlines()
    assert rendered[2] == "| benchmark/run/metrics.py | 1 | 0 | 0 | 1 | 0 | 0 | 0.0 |"
    assert rendered[3] == "| nagl/model.py | 3 | 2 | 1 | 0 | 0 | 0 | 66.7 |"
    assert rendered[-1] == "| **all** | 4 | 2 | 1 | 1 | 0 | 0 | 50.0 |"
