"""The harness's own arithmetic: figures in the README come from it."""

from __future__ import annotations

import importlib.util
import math
import sys
from types import ModuleType

from tests.stack import REPO


def _throughput() -> ModuleType:
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("throughput", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_histogram_median_interpolates_in_its_bucket_as_prometheus_does() -> None:
    median = _throughput().histogram_median
    # 10 observations: 2 up to 10 ms, 8 up to 50 ms; rank 5 is 3/8 of the way into (10, 50].
    assert math.isclose(median([(0.01, 2), (0.05, 10), (float("inf"), 10)]), 0.01 + 0.04 * 3 / 8)
    assert median([(0.01, 0), (float("inf"), 4)]) == 0.01  # in +Inf: the last finite bound
    assert median([]) == 0.0 and median([(0.01, 0), (float("inf"), 0)]) == 0.0
