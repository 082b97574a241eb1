"""Budget spellings, aliases, units, relative budgets and their errors."""

from __future__ import annotations

import pytest

from mpsearch.errors import MpsearchError
from mpsearch.search import Budget, parse_budget, resolve_budget
from mpsearch.search.budget import as_budgets


@pytest.mark.parametrize(
    "text, metric, value",
    [
        ("latency_s=2e-3", "latency_s", 2e-3),
        ("latency=2ms", "latency_s", 2e-3),
        ("latency=150us", "latency_s", 150e-6),
        ("weight=40KB", "weight_bytes", 40_000.0),
        ("memory=1.5MiB", "weight_bytes", 1.5 * 1024**2),
        ("weight_bytes=1024", "weight_bytes", 1024.0),
        ("act=2kib", "peak_act_bytes", 2048.0),
        ("activation=100", "peak_act_bytes", 100.0),
        ("bops=3G", "bops", 3e9),
        ("energy=1.5mJ", "energy_j", 1.5e-3),
        ("energy_j=2", "energy_j", 2.0),
        (" Latency = 5 s ", "latency_s", 5.0),
    ],
)
def test_absolute_budgets(text, metric, value):
    b = parse_budget(text)
    assert (b.metric, b.relative) == (metric, False)
    assert b.value == pytest.approx(value, rel=1e-12)


def test_relative_budgets_canonicalise_the_baseline():
    b = parse_budget("weight_bytes=0.5x:int8/fp32")
    assert b == Budget("weight_bytes", 0.5, relative=True, baseline="int8/fp32")
    assert parse_budget("latency=0.5x:int8").baseline == "int8/fp32"
    assert parse_budget("act=0.25x:int8/int8").baseline == "int8/int8"
    assert parse_budget("memory=2x").baseline == "fp32/fp32"
    assert str(parse_budget("weight=0.5x:int8")) == "weight_bytes=0.5x:int8/fp32"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("latency", "must look like"),
        ("speed=3", "unknown metric"),
        ("latency=fast", "cannot read"),
        ("latency=2KB", "does not fit"),
        ("weight=3ms", "does not fit"),
        ("latency=-1", "positive"),
        ("latency=0", "positive"),
        ("weight=0.5x:int9", "unknown format"),
        ("weight=nanx", "cannot read"),
    ],
)
def test_bad_budgets_raise_one_line_errors(text, fragment):
    with pytest.raises(MpsearchError, match=fragment) as e:
        parse_budget(text)
    assert "\n" not in str(e.value)


def test_resolve_relative_and_absolute(hand):
    sens, costs = hand
    names = ["A", "B", "C"]
    # uniform int8/fp32 weights: 8 + 16 + 4 = 28 bytes; peak act of uniform int8/int8: max(10+5, 5+20) = 25
    assert resolve_budget("weight=0.5x:int8", costs, names) == pytest.approx(14.0)
    assert resolve_budget("act=2x:int8/int8", costs, names) == pytest.approx(50.0)
    assert resolve_budget("latency=1.5", costs, names) == 1.5


def test_resolve_rejects_a_baseline_missing_from_the_table(hand):
    _, costs = hand
    with pytest.raises(MpsearchError, match="baseline candidate 'int4/int8' is not in the cost table"):
        resolve_budget("weight=0.5x:int4/int8", costs, ["A", "B", "C"])


def test_one_budget_per_metric_and_mapping_form():
    assert [b.metric for b in as_budgets({"latency_s": 1e-3, "weight_bytes": 10})] == ["latency_s", "weight_bytes"]
    with pytest.raises(MpsearchError, match="two budgets for latency_s"):
        as_budgets(["latency=1ms", "latency_s=2e-3"])
