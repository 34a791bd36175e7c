"""The reproduction's seed counts come from a power analysis (docs/reproduction.md): its parts
against textbook values, and the plan against the study files."""

from __future__ import annotations

import math

import pytest
import yaml

from pitfalls.repro import COMPARISONS, STUDIES, load_repro_studies, planned_seeds, power_plan
from pitfalls.repro_power import ALPHA, MIN_SEEDS, PRIOR_RUNS, PriorRun, pooled, power, seeds_needed


def test_power_matches_the_textbook_paired_t_test():
    # d = 0.5 at alpha 0.05 needs 34 pairs for 80 % power (Cohen; G*Power gives 34, 0.808)
    assert power(0.5, 34, 0.05) == pytest.approx(0.808, abs=0.005)
    assert seeds_needed(0.5, 0.05) == 34
    assert power(0.0, 20, 0.05) == pytest.approx(0.05, abs=1e-9)  # no effect: the test's size
    assert power(40.0, 10, 0.01) == 1.0  # far in the tail, where scipy alone gives nan
    # scipy's nan in the far (opposite) tail is that tail's 0, not the power's: F2's d at n = 5
    assert power(3.71, 5, 0.01) == pytest.approx(0.978, abs=0.001)
    assert seeds_needed(3.71, 0.01) == 5
    assert seeds_needed(0.01, 0.01) is None  # out of reach


def test_a_prior_run_recovers_its_spread_from_an_interval_or_a_p_value():
    run = PriorRun.from_interval(0.25, 0.05, 0.45, pairs=10)
    from scipy import stats

    t = stats.t.isf(0.025, 9)
    assert run.sd == pytest.approx(0.2 / t * math.sqrt(10))
    p = 2 * stats.t.sf(run.effect / (run.sd / math.sqrt(10)), 9)
    assert PriorRun.from_p(0.25, p).sd == pytest.approx(run.sd)


def test_pooling_counts_the_difference_between_runs_as_spread():
    a, b = PriorRun(0.1, 0.05, 10), PriorRun(0.0, 0.05, 10)
    both = pooled((a, b))
    assert both.effect == pytest.approx(0.05) and both.pairs == 20
    # the 20 values as one sample: 9 + 9 df within, plus 10 * 0.05^2 from each run's mean
    assert both.sd == pytest.approx(math.sqrt((18 * 0.05**2 + 20 * 0.05**2) / 19))
    assert pooled((a, a)).sd < both.sd


def test_every_primary_comparison_has_two_prior_runs_and_the_studies_get_what_the_plan_asks():
    primaries = [c for c in COMPARISONS if c.primary]
    assert {c.key for c in primaries} == set(PRIOR_RUNS)
    plans = power_plan()
    assert all(p.alpha == pytest.approx(ALPHA / len(primaries)) for p in plans)
    seeds = planned_seeds(plans)
    for c in primaries:
        p = next(p for p in plans if p.key == c.key)
        assert seeds[c.study] >= max(MIN_SEEDS, p.needed or 0)
        if p.needed:
            assert p.power_at(seeds[c.study]) >= 0.8
    # the quick run (the study files' own seeds) is the first MIN_SEEDS of every full one, so a
    # quick table is a full run's first seeds
    for path in STUDIES.glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["seeds"] == list(range(MIN_SEEDS))
    specs = {s.name: s for s in load_repro_studies(seeds, check_weights=False)}
    assert {n: len(s.seeds) for n, s in specs.items()} == seeds
    assert all(list(s.seeds) == list(range(len(s.seeds))) for s in specs.values())
