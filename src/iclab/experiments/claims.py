"""Claims a reviewer can check: the paper's statement and its place, the kind of check, iclab's measured value
with its interval, the test that decides it, the seeds it holds at and the negative controls that the same
test must reject.

A recipe declares its claims (:class:`Claim`) once per size; the framework (:mod:`iclab.experiments.reproduce`)
evaluates each claim on every seed's measurements (:func:`evaluate`): the claim's ``measure`` gives an
:class:`Estimate`, its :class:`Criterion` decides it, and every control's estimate (a named wrong answer measured the
same way: a perturbed optimum, a competing theory's step size, the competing algorithm, a model of the wrong
kind) goes through the same test, which must reject it. A claim is

- *reproduced* (a theory check: *holds*) when the test says yes at every seed and every control is rejected at
  every seed;
- *not discriminating* when it holds but some control passes too: the test cannot tell the answer from a wrong
  one, so it does not count as reproduced;
- *not reproduced* (*fails*) when the test says no at one seed or more ("k of K seeds");
- *not tested* when the size cannot test it (the reason is given); it is still listed and counted.

Reproductions (trained models against the paper's statement) and theory checks (exact computation against a
closed form) are counted apart (:func:`counts`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from iclab.evaluate import loss_statistics

REPRODUCTION = "reproduction"
THEORY = "theory check"
KINDS = (REPRODUCTION, THEORY)

REPRODUCED, NOT_REPRODUCED, NOT_DISCRIMINATING, NOT_TESTED = (
    "reproduced",
    "not reproduced",
    "not discriminating",
    "not tested",
)
MIN_SEEDS = 3  # a reproduction claim runs at this many seeds or more


@dataclass(frozen=True)
class Estimate:
    """One measured value as a test reads it: ``value``, its interval ``[low, high]`` where it is an estimate
    (NaN otherwise), the sequence it summarises where it is one (e.g. the iterations matched layer by layer) and
    how the report shows it (``text``; by default the value and its interval)."""

    value: float
    low: float = math.nan
    high: float = math.nan
    values: tuple[float, ...] = ()
    text: str = ""

    def shown(self) -> str:
        if self.text:
            return self.text
        if math.isfinite(self.low) and math.isfinite(self.high):
            return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"
        return f"{self.value:.4g}"


@dataclass(frozen=True)
class Criterion:
    """What decides a claim: ``text`` says it in words (with its tolerance and where that comes from), ``decide``
    reads an :class:`Estimate` (the model's, and every control's) and says yes or no."""

    text: str
    decide: Callable[[Estimate], bool]

    def __call__(self, estimate: Estimate) -> bool:
        return bool(self.decide(estimate)) and not math.isnan(estimate.value)


NO_DIFFERENCE = Estimate(0.0, 0.0, 0.0, text="+0 [+0, +0]")  # a control identical to its reference


def reading(read: Callable[[Any], float], text: str = "{:.4g}") -> Measure:
    """A measure that reads one number from a seed's measurements, shown as ``text.format(number)``."""

    def measure(data: Any) -> Estimate:
        value = float(read(data))
        return Estimate(value, text=text.format(value))

    return measure


def trend(read: Callable[[Any], Sequence[float]], text: str = "{:.3g}") -> Measure:
    """A measure of a sequence read from a seed's measurements (e.g. along n): its last value over its first, the
    sequence kept (``Estimate.values``) and shown in full."""

    def measure(data: Any) -> Estimate:
        values = tuple(float(v) for v in read(data))
        return Estimate(values[-1] / values[0], values=values, text=" → ".join(text.format(v) for v in values))

    return measure


def shrinks(ratio: float, why: str = "") -> Criterion:
    """Yes for a :func:`trend` that falls at every step and ends below ``ratio`` × its start (``why``: where the
    ratio comes from, for the report)."""
    text = f"decreasing at every step, and the last below {ratio:.3g} × the first" + (f" ({why})" if why else "")
    return Criterion(text, lambda e: bool((np.diff(e.values) < 0).all()) and e.value < ratio)


def mean_interval(values: torch.Tensor | np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of per-prompt (or per-sweep) values (B,) and its percentile bootstrap interval at ``confidence``
    (:func:`iclab.evaluate.loss_statistics`): (mean, low, high)."""
    column = torch.as_tensor(values, dtype=torch.float64).reshape(-1, 1)
    mean, _, low, high, _ = loss_statistics(column, confidence=confidence)
    return float(mean[0]), float(low[0]), float(high[0])


def below(limit: float, text: str) -> Criterion:
    """Yes when the value is below ``limit``."""
    return Criterion(text, lambda e: e.value < limit)


def above(limit: float, text: str) -> Criterion:
    """Yes when the value is above ``limit``."""
    return Criterion(text, lambda e: e.value > limit)


def interval_below(limit: float, text: str) -> Criterion:
    """Yes when the whole interval lies below ``limit`` (its upper end; the value where it has none)."""
    return Criterion(text, lambda e: (e.high if math.isfinite(e.high) else e.value) < limit)


def interval_above(limit: float, text: str) -> Criterion:
    """Yes when the whole interval lies above ``limit`` (its lower end; the value where it has none)."""
    return Criterion(text, lambda e: (e.low if math.isfinite(e.low) else e.value) > limit)


Measure = Callable[[Any], Estimate]  # one seed's measurements (the recipe's own object) → an estimate


@dataclass(frozen=True)
class Claim:
    """One claim of a paper as a recipe checks it.

    ``key`` names it stably (tests and docs refer to it); ``claim`` says what iclab checks; ``paper`` is the
    paper's statement (and its number, where it gives one) and ``place`` where it stands (figure, table,
    theorem, section); ``kind`` is :data:`REPRODUCTION` or :data:`THEORY`. ``measure`` reads one seed's
    measurements into an :class:`Estimate`, which ``test`` decides; ``controls`` maps the name of each wrong
    answer to its estimate on the same seed, which the same test must reject (at least one). ``untested`` says
    why this size cannot test the claim (then nothing is measured); ``note`` is the recipe's known reason where
    the claim is expected not to reproduce (shown beside the verdict).

    Raises ValueError for an unknown kind or a claim without a control."""

    key: str
    claim: str
    paper: str
    place: str
    kind: str
    measure: Measure
    test: Criterion
    controls: Mapping[str, Measure] = field(default_factory=dict)
    untested: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.key!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.controls and not self.untested:
            raise ValueError(f"claim {self.key!r} has no negative control: name a wrong answer its test must reject")


def untested(key: str, claim: str, paper: str, place: str, kind: str, why: str) -> Claim:
    """A claim of the paper that this size cannot test, listed and counted with ``why``."""
    return Claim(key, claim, paper, place, kind, measure=_nothing, test=Criterion("", lambda _: False), untested=why)


def _nothing(_: Any) -> Estimate:
    return Estimate(math.nan)


@dataclass(frozen=True)
class Verdict:
    """One claim on one seed: the model's estimate and whether the test said yes; each control's estimate and
    whether the test rejected it (``{name: (estimate, rejected)}``)."""

    seed: int
    estimate: Estimate
    holds: bool
    controls: dict[str, tuple[Estimate, bool]]


@dataclass(frozen=True)
class ClaimResult:
    """A claim over every seed: its verdicts (one per seed, none when untested) and what they add up to."""

    claim: Claim
    verdicts: tuple[Verdict, ...]

    @property
    def seeds(self) -> int:
        return len(self.verdicts)

    @property
    def held(self) -> int:
        """Seeds at which the test said yes."""
        return sum(v.holds for v in self.verdicts)

    @property
    def passed_controls(self) -> list[str]:
        """Controls the test did not reject at some seed (their names, in declared order)."""
        return [name for name in self.claim.controls if any(not v.controls[name][1] for v in self.verdicts)]

    @property
    def status(self) -> str:
        if self.claim.untested:
            return NOT_TESTED
        if self.held < self.seeds or not self.verdicts:
            return NOT_REPRODUCED
        if self.passed_controls:
            return NOT_DISCRIMINATING
        return REPRODUCED

    @property
    def counted(self) -> bool:
        """Reproduced (a theory check: holds)."""
        return self.status == REPRODUCED

    def verdict_text(self) -> str:
        """The verdict as the report and the CLI write it."""
        theory = self.claim.kind == THEORY
        if self.status == NOT_TESTED:
            return f"not tested: {self.claim.untested}"
        if self.status == NOT_REPRODUCED:
            word = "fails" if theory else "not reproduced"
            return f"{word} ({self.held} of {self.seeds} seeds)"
        if self.status == NOT_DISCRIMINATING:
            return f"not discriminating (the control {', '.join(self.passed_controls)} passes too)"
        return f"{'holds' if theory else 'reproduced'} ({self.held} of {self.seeds} seeds)"

    def value(self) -> Estimate:
        """The mean of the seeds' values, and the span of their intervals (of their values where they have
        none): the lowest low and the highest high."""
        if not self.verdicts:
            return Estimate(math.nan)
        values = [v.estimate.value for v in self.verdicts]
        lows = [v.estimate.low if math.isfinite(v.estimate.low) else v.estimate.value for v in self.verdicts]
        highs = [v.estimate.high if math.isfinite(v.estimate.high) else v.estimate.value for v in self.verdicts]
        finite = [x for x in values if not math.isnan(x)]
        mean = sum(finite) / len(finite) if finite else math.nan
        return Estimate(mean, _nan_min(lows), _nan_max(highs))

    def values_text(self) -> str:
        """Every seed's value as the report shows it, " · "-separated (once, where every seed gives the same)."""
        shown = [v.estimate.shown() for v in self.verdicts]
        if len(set(shown)) == 1 and len(shown) > 1:
            return f"{shown[0]} (every seed)"
        return " · ".join(shown)

    def controls_text(self) -> str:
        """Each control: its value at every seed and whether the test rejected it there."""
        parts = []
        for name in self.claim.controls:
            seen = [v.controls[name] for v in self.verdicts]
            rejected = sum(r for _, r in seen)
            shown = list(dict.fromkeys(e.shown() for e, _ in seen))  # a value the same at every seed: once
            parts.append(f"{name}: {' · '.join(shown)} → rejected at {rejected} of {len(seen)} seeds")
        return "; ".join(parts)


def _nan_min(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return min(finite) if finite else math.nan


def _nan_max(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def evaluate(claims: Sequence[Claim], measurements: Mapping[int, Any]) -> list[ClaimResult]:
    """Every claim on every seed's measurements ``{seed: the recipe's measurements}``: its test on its own
    estimate and on each control's. Raises ValueError for two claims with one key."""
    keys = [c.key for c in claims]
    if len(set(keys)) != len(keys):
        raise ValueError(f"claim keys must be unique, got {sorted(k for k in keys if keys.count(k) > 1)}")
    results = []
    for claim in claims:
        if claim.untested:
            results.append(ClaimResult(claim, ()))
            continue
        verdicts = []
        for seed, data in measurements.items():
            estimate = _measured(claim.measure, data)
            controls = {}
            for name, measure in claim.controls.items():
                control = _measured(measure, data)
                controls[name] = (control, not claim.test(control))
            verdicts.append(Verdict(seed, estimate, claim.test(estimate), controls))
        results.append(ClaimResult(claim, tuple(verdicts)))
    return results


def _measured(measure: Measure, data: Any) -> Estimate:
    """``measure(data)``, or a NaN estimate (which no test passes) where a run the claim reads is missing from a
    recipe that lets runs diverge."""
    try:
        return measure(data)
    except (KeyError, IndexError):
        return Estimate(math.nan, text="not measured: a run it needs is missing (diverged)")


@dataclass(frozen=True)
class Counts:
    """What a reproduction adds up to: paper claims (reproductions) reproduced, not reproduced (of which not
    discriminating), not tested (with the reasons), and theory checks that hold, of how many."""

    reproduced: int
    not_reproduced: int
    not_discriminating: int
    not_tested: int
    untested_why: tuple[str, ...]
    theory_held: int
    theory_total: int

    @property
    def paper_total(self) -> int:
        return self.reproduced + self.not_reproduced + self.not_discriminating + self.not_tested

    def text(self) -> str:
        """The counts in words: R of N paper claims reproduced, F not reproduced (D not discriminating), U not
        tested at this size (why); T of T theory checks hold."""
        failed = self.not_reproduced + self.not_discriminating
        parts = [f"{self.reproduced} of {self.paper_total} paper claims reproduced", f"{failed} not reproduced"]
        if self.not_discriminating:
            parts[-1] += f" ({self.not_discriminating} of them not discriminating)"
        if self.not_tested:
            reasons = "; ".join(dict.fromkeys(self.untested_why))
            parts.append(f"{self.not_tested} not tested at this size ({reasons})")
        text = ", ".join(parts)
        if self.theory_total:
            text += f"; {self.theory_held} of {self.theory_total} theory checks hold"
        return text


def counts(results: Sequence[ClaimResult]) -> Counts:
    """The counts of the evaluated claims: reproductions and theory checks apart."""
    return counts_of(claims_frame(results))


def counts_of(frame: pd.DataFrame) -> Counts:
    """The counts of a claims table (claims.csv, or a recorded one): reproductions and theory checks apart."""
    paper = frame[frame["kind"] == REPRODUCTION]
    theory = frame[(frame["kind"] == THEORY) & (frame["status"] != NOT_TESTED)]
    status = paper["status"]
    return Counts(
        reproduced=int((status == REPRODUCED).sum()),
        not_reproduced=int((status == NOT_REPRODUCED).sum()),
        not_discriminating=int((status == NOT_DISCRIMINATING).sum()),
        not_tested=int((status == NOT_TESTED).sum()),
        untested_why=tuple(paper.loc[status == NOT_TESTED, "untested"].astype(str)),
        theory_held=int((theory["status"] == REPRODUCED).sum()),
        theory_total=len(theory),
    )


def failures(results: Sequence[ClaimResult]) -> list[ClaimResult]:
    """The claims that were tested and are not reproduced (or do not hold, or do not discriminate)."""
    return [r for r in results if r.status in (NOT_REPRODUCED, NOT_DISCRIMINATING)]


CLAIM_COLUMNS = ["key", "kind", "place", "claim", "paper", "value", "low", "high", "shown", "test", "seeds_held",
                 "seeds", "controls", "status", "verdict", "untested", "note"]  # fmt: skip


def claims_frame(results: Sequence[ClaimResult]) -> pd.DataFrame:
    """claims.csv: one row per claim (its value the mean over seeds, its interval the span of theirs; ``shown``
    every seed's value as the report writes it)."""
    rows = []
    for r in results:
        value = r.value()
        rows.append({
            "key": r.claim.key, "kind": r.claim.kind, "place": r.claim.place, "claim": r.claim.claim,
            "paper": r.claim.paper, "value": value.value, "low": value.low, "high": value.high,
            "shown": r.values_text(), "test": r.claim.test.text,
            "seeds_held": r.held, "seeds": r.seeds, "controls": r.controls_text(), "status": r.status,
            "verdict": r.verdict_text(), "untested": r.claim.untested, "note": r.claim.note,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def seeds_frame(results: Sequence[ClaimResult]) -> pd.DataFrame:
    """claims_by_seed.csv: one row per claim, seed and subject (``model``, or a control's name): the estimate,
    its interval and whether the test said yes."""
    rows = []
    for r in results:
        for v in r.verdicts:
            subjects = [("model", v.estimate, v.holds)] + [(n, e, not rej) for n, (e, rej) in v.controls.items()]
            for subject, estimate, passes in subjects:
                rows.append({"key": r.claim.key, "seed": v.seed, "subject": subject, "value": estimate.value,
                             "low": estimate.low, "high": estimate.high, "shown": estimate.shown(),
                             "passes": passes})  # fmt: skip
    return pd.DataFrame(rows, columns=["key", "seed", "subject", "value", "low", "high", "shown", "passes"])
