"""The claims framework on measurements given by hand: a claim's verdict over seeds, its controls, the counts."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from iclab.experiments.claims import (
    NOT_DISCRIMINATING,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    REPRODUCTION,
    THEORY,
    Claim,
    Criterion,
    Estimate,
    below,
    claims_frame,
    counts,
    counts_of,
    evaluate,
    interval_above,
    interval_below,
    seeds_frame,
    untested,
)


def claim(key: str = "c", kind: str = REPRODUCTION, limit: float = 1.0, control: float = 5.0) -> Claim:
    """Test: the seed's value below ``limit``; one control at ``control``."""
    return Claim(key, f"claim {key}", "the paper says so", "Fig. 1", kind, lambda data: Estimate(data[key]),
                 below(limit, f"< {limit}"), {"a wrong answer": lambda _: Estimate(control)})  # fmt: skip


def test_a_claim_is_reproduced_only_when_it_holds_at_every_seed_and_every_control_is_rejected():
    measurements = {0: {"c": 0.5}, 1: {"c": 0.7}, 2: {"c": 0.9}}
    (result,) = evaluate([claim()], measurements)
    assert result.status == REPRODUCED and result.held == 3 and result.seeds == 3
    value = result.value()
    assert value.value == pytest.approx(0.7) and (value.low, value.high) == (0.5, 0.9)  # the span over seeds
    (failing,) = evaluate([claim()], {0: {"c": 0.5}, 1: {"c": 1.5}, 2: {"c": 0.9}})
    assert failing.status == NOT_REPRODUCED and failing.held == 2
    assert failing.verdict_text() == "not reproduced (2 of 3 seeds)"


def test_a_control_that_passes_makes_the_claim_not_discriminating():
    (result,) = evaluate([claim(control=0.99)], {0: {"c": 0.5}, 1: {"c": 0.5}, 2: {"c": 0.5}})
    assert result.held == 3 and result.status == NOT_DISCRIMINATING
    assert result.passed_controls == ["a wrong answer"] and "a wrong answer passes too" in result.verdict_text()
    assert not result.counted


def test_a_nan_estimate_never_passes_a_test():
    test = below(1.0, "< 1")
    assert test(Estimate(0.5)) and not test(Estimate(math.nan)) and not test(Estimate(2.0))


def test_interval_tests_read_the_interval_ends():
    assert interval_below(0, "")(Estimate(-1.0, -2.0, -0.1)) and not interval_below(0, "")(Estimate(-1.0, -2.0, 0.1))
    assert interval_above(0, "")(Estimate(1.0, 0.1, 2.0)) and not interval_above(0, "")(Estimate(1.0, -0.1, 2.0))
    assert interval_below(0, "")(Estimate(-1.0))  # no interval: the value decides


def test_a_claim_needs_a_control_and_a_known_kind_and_keys_are_unique():
    with pytest.raises(ValueError, match="no negative control"):
        Claim("k", "c", "p", "Fig. 1", REPRODUCTION, lambda _: Estimate(0.0), below(1, ""))
    with pytest.raises(ValueError, match="kind must be one of"):
        Claim("k", "c", "p", "Fig. 1", "observation", lambda _: Estimate(0.0), below(1, ""), {"x": lambda _: 0})
    with pytest.raises(ValueError, match="unique"):
        evaluate([claim("a"), claim("a")], {0: {"a": 0.0}})


def test_counts_keep_reproductions_and_theory_checks_apart_and_list_what_was_not_tested():
    claims = [
        claim("good"),
        claim("bad"),
        claim("loose", control=0.1),
        claim("exact", kind=THEORY),
        untested("trees", "trees", "greedy tree 0.80", "Fig. 4", REPRODUCTION, "the quick size has no trees"),
    ]
    data = {seed: {"good": 0.1, "bad": 2.0, "loose": 0.1, "exact": 0.0} for seed in range(3)}
    results = evaluate(claims, data)
    assert [r.status for r in results] == [REPRODUCED, NOT_REPRODUCED, NOT_DISCRIMINATING, REPRODUCED, NOT_TESTED]
    total = counts(results)
    assert (total.reproduced, total.not_reproduced, total.not_discriminating, total.not_tested) == (1, 1, 1, 1)
    assert (total.theory_held, total.theory_total, total.paper_total) == (1, 1, 4)
    assert total.text() == (
        "1 of 4 paper claims reproduced, 2 not reproduced (1 of them not discriminating), "
        "1 not tested at this size (the quick size has no trees); 1 of 1 theory checks hold"
    )
    frame = claims_frame(results)
    assert counts_of(pd.read_csv(io.StringIO(frame.to_csv(index=False)))) == total  # a recorded table
    by_seed = seeds_frame(results)
    assert len(by_seed) == 4 * 3 * 2  # 4 tested claims × 3 seeds × (model, one control)
    bad = by_seed[(by_seed.key == "bad") & (by_seed.subject == "model")]
    assert not bad["passes"].any() and (bad["value"] == 2.0).all()


def test_a_claim_untested_at_a_size_is_listed_with_its_reason():
    (result,) = evaluate([untested("u", "c", "p", "Table 1", THEORY, "needs a GPU")], {0: {}, 1: {}, 2: {}})
    assert result.status == NOT_TESTED and result.verdicts == () and result.verdict_text() == "not tested: needs a GPU"
    assert counts([result]).theory_total == 0  # a theory check not run is not counted among them


def test_the_same_test_decides_the_model_and_its_controls():
    seen = []
    test = Criterion("records", lambda e: seen.append(e.value) or e.value < 1)
    measure = {"m": lambda d: Estimate(d["v"])}
    c = Claim("k", "c", "p", "Fig. 1", REPRODUCTION, measure["m"], test, {"x": lambda d: Estimate(d["v"] + 10)})
    (result,) = evaluate([c], {0: {"v": 0.5}})
    assert seen == [10.5, 0.5] and result.verdicts[0].controls["x"][1]  # the control rejected by the same test


def test_the_shared_measures():
    """reading formats the number it reads; trend keeps the sequence and divides its ends; shrinks needs a fall at
    every step and a last value below the ratio; mean_interval's interval is the bootstrap's, about ±1.96 s.e."""
    from iclab.experiments.claims import mean_interval, reading, shrinks, trend

    assert reading(lambda d: d["x"], "{:.1%}")({"x": 0.1234}).shown() == "12.3%"
    falling = trend(lambda d: d)([4.0, 2.0, 0.5])
    assert falling.values == (4.0, 2.0, 0.5) and falling.value == 0.125 and falling.shown() == "4 → 2 → 0.5"
    assert shrinks(0.25)(falling) and not shrinks(0.1)(falling)
    assert not shrinks(0.25)(trend(lambda d: d)([4.0, 4.5, 0.5]))  # a rise on the way
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 2.0, size=20_000)
    mean, low, high = mean_interval(values)
    sem = values.std(ddof=1) / np.sqrt(len(values))
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert low < mean < high and (high - low) / (2 * 1.96 * sem) == pytest.approx(1.0, abs=0.1)
    narrow = mean_interval(values, confidence=0.5)
    assert narrow[1] > low and narrow[2] < high
