"""Bench stage: accuracy and speed of every (model, backend), tables, report, plot.

``run_bench`` (in :mod:`vggc.bench.core`) is the library entry point; ``vggc bench`` is its CLI.
"""

from vggc.bench.core import DEFAULT_OUT, QUICK_IMAGES, BenchRows, apply_baseline, parse_backends, run_bench
from vggc.bench.report import COLUMNS, CONTRACT, screen_table, write_outputs
from vggc.bench.timed import timing_key_inputs
from vggc.bench.timing import (
    FULL,
    FULL_ROUNDS,
    QUICK,
    QUICK_ROUNDS,
    RoundsPolicy,
    Timing,
    TimingPolicy,
    measure,
    measure_rounds,
    percentile,
)

__all__ = ["BenchRows", "COLUMNS", "CONTRACT", "DEFAULT_OUT", "FULL", "FULL_ROUNDS", "QUICK", "QUICK_IMAGES",
           "QUICK_ROUNDS", "RoundsPolicy", "Timing", "TimingPolicy", "apply_baseline", "measure", "measure_rounds",
           "parse_backends", "percentile", "run_bench", "screen_table", "timing_key_inputs", "write_outputs"]
