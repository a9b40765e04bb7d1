"""Timing one callable until its median is stable: the measurement rule every bench row uses.

:func:`measure` calls ``fn`` ``warmup`` times untimed, then times it repeatedly and stops at the
first of:

* **stable**: at least ``min_reps`` calls and ``min_time`` seconds measured, and the median of all
  samples differs by less than ``rel_tol`` (2 %) from the median before the last quarter of them
  was added (``samples[:n - max(1, n // 4)]``): more samples no longer move it;
* **cap**: ``max_time`` seconds measured (``stable=False``; a very slow call still gets >= 1 sample);
* ``max_reps`` calls.

The clock is injectable (``clock=``) so the rule is tested on a fake clock.

:func:`measure_rounds` is the bench's default: it times *several* callables in interleaved rounds
(every round times every callable once, for at least ``calls`` calls and ``seconds`` seconds; the
order is reversed every other round so a slow drift of the machine hits all of them alike). On a
shared machine a row timed alone can land in a busy minute and another in a quiet one, which made
ratios between rows of one bench run differ by up to 2x; rounds spread that noise over every row.
A callable that raises is dropped from the later rounds and its error returned in its place.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


@dataclass(frozen=True)
class TimingPolicy:
    """How long to measure. ``QUICK`` and ``FULL`` are the bench's two settings."""

    warmup: int = 2
    min_reps: int = 5
    min_time: float = 2.0
    max_time: float = 20.0
    rel_tol: float = 0.02
    max_reps: int = 100_000

    def to_dict(self) -> dict:
        return {"mode": "sequential", "warmup": self.warmup, "min_reps": self.min_reps, "min_time_s": self.min_time,
                "max_time_s": self.max_time, "rel_tol": self.rel_tol, "max_reps": self.max_reps}


FULL = TimingPolicy(warmup=2, min_reps=5, min_time=2.0, max_time=20.0)
QUICK = TimingPolicy(warmup=1, min_reps=5, min_time=1.0, max_time=8.0)


@dataclass
class Timing:
    """Per-call durations in seconds and whether the stop rule saw a stable median."""

    samples: list[float] = field(default_factory=list)
    stable: bool = False
    total_s: float = 0.0
    round_medians: list[float] = field(default_factory=list)  # measure_rounds only: one per round
    spread: float | None = None  # measure_rounds only: (p75 - p25) / p50 of round_medians

    @property
    def reps(self) -> int:
        return len(self.samples)

    @property
    def p50(self) -> float:
        return median(self.samples)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90.0)


def _settled(samples: list[float], rel_tol: float) -> bool:
    n = len(samples)
    if n < 2:
        return False
    before = median(samples[: n - max(1, n // 4)])
    now = median(samples)
    if before <= 0:
        return now == before
    return abs(now - before) / before < rel_tol


def measure(fn: Callable[[], object], policy: TimingPolicy = FULL, *,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``fn()`` under ``policy`` (see the module docstring); return a :class:`Timing`."""
    for _ in range(policy.warmup):
        fn()
    out = Timing()
    start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        out.samples.append(t1 - t0)
        elapsed = t1 - start
        out.total_s = elapsed
        if (out.reps >= policy.min_reps and elapsed >= policy.min_time
                and _settled(out.samples, policy.rel_tol)):
            out.stable = True
            return out
        if elapsed >= policy.max_time or out.reps >= policy.max_reps:
            return out


@dataclass(frozen=True)
class RoundsPolicy:
    """Interleaved timing (:func:`measure_rounds`). ``QUICK_ROUNDS``/``FULL_ROUNDS`` are the bench's.

    A timing is ``stable`` when the interquartile range of its per-round medians is at most
    ``spread_tol`` of their median: most rounds agreed (one odd round does not count against it).
    """

    rounds: int = 7
    warmup: int = 2
    spread_tol: float = 0.10

    def to_dict(self) -> dict:
        return {"mode": "interleaved", "rounds": self.rounds, "warmup": self.warmup, "spread_tol": self.spread_tol}


FULL_ROUNDS = RoundsPolicy(rounds=7, warmup=2)
QUICK_ROUNDS = RoundsPolicy(rounds=3, warmup=1)


def timing_policy(mode: str = "interleaved", quick: bool = False,
                  rounds: int | None = None) -> TimingPolicy | RoundsPolicy:
    """Return the bench's timing policy: ``interleaved`` (default; ``rounds`` overrides its count)
    or ``sequential``, each in its quick or full size. Raises :class:`InputError` for ``rounds``
    with ``sequential`` and for an unknown mode."""
    from dataclasses import replace

    from vggc.errors import InputError

    if mode == "sequential":
        if rounds is not None:
            raise InputError("--rounds applies to --timing interleaved only")
        return QUICK if quick else FULL
    if mode != "interleaved":
        raise InputError(f"--timing {mode}: use interleaved or sequential")
    policy = QUICK_ROUNDS if quick else FULL_ROUNDS
    return policy if rounds is None else replace(policy, rounds=rounds)


@dataclass(frozen=True)
class Task:
    """One callable for :func:`measure_rounds`: each round times it ``calls`` times and at least
    ``seconds`` seconds."""

    fn: Callable[[], object]
    calls: int = 2
    seconds: float = 0.5


def measure_rounds(tasks: Sequence[Task], policy: RoundsPolicy = FULL_ROUNDS, *,
                   clock: Callable[[], float] = time.perf_counter,
                   progress: Callable[..., Iterable] | None = None) -> list[Timing | BaseException]:
    """Time ``tasks`` in ``policy.rounds`` interleaved rounds (see the module docstring).

    Returns, per task in order, a :class:`Timing` over all its samples (``round_medians`` holds one
    median per round) or the exception it raised (it is then left out of the later rounds).
    ``progress(iterable, total=, desc=)`` wraps the loop over rounds (a progress bar in the CLI).
    """
    if policy.rounds < 1:
        raise ValueError(f"rounds {policy.rounds}: must be at least 1")
    out: list[Timing | BaseException] = [Timing() for _ in tasks]
    for i, t in enumerate(tasks):
        try:
            for _ in range(policy.warmup):
                t.fn()
        except Exception as err:  # noqa: BLE001 - returned in the task's place
            out[i] = err
    rounds: Iterable[int] = range(policy.rounds)
    if progress is not None:
        rounds = progress(rounds, total=policy.rounds, desc="timing rounds")
    for r in rounds:
        order = range(len(tasks)) if r % 2 == 0 else range(len(tasks) - 1, -1, -1)
        for i in order:
            res = out[i]
            if not isinstance(res, Timing):
                continue
            task = tasks[i]
            got: list[float] = []
            start = clock()
            try:
                while True:
                    t0 = clock()
                    task.fn()
                    t1 = clock()
                    got.append(t1 - t0)
                    if len(got) >= max(1, task.calls) and t1 - start >= task.seconds:
                        break
            except Exception as err:  # noqa: BLE001
                out[i] = err
                continue
            res.samples.extend(got)
            res.round_medians.append(median(got))
            res.total_s += clock() - start
    for res in out:
        if isinstance(res, Timing) and res.round_medians:
            mid = median(res.round_medians)
            iqr = percentile(res.round_medians, 75.0) - percentile(res.round_medians, 25.0)
            res.spread = iqr / mid if mid > 0 else 0.0
            res.stable = res.spread <= policy.spread_tol
    return out
