"""Property-based fuzzing of the user-facing parsers: nothing but MpsearchError may escape."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.errors import MpsearchError
from mpsearch.formats import parse_format
from mpsearch.pipeline import OptimizeConfig
from mpsearch.plan import Candidate, Plan

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
spellings = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\A(u?int|e|mx|nv|fp|bf)[0-9]{0,3}(m[0-9]{0,2})?(g[0-9]{0,4}|t)?\Z", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(spellings)
def test_format_spelling(s):
    try:
        f = parse_format(s)
    except MpsearchError:
        return
    assert parse_format(f.spelling).spelling == f.spelling


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_candidate_spelling(s):
    try:
        Candidate.parse(s)
    except MpsearchError:
        pass


plan_like = st.fixed_dictionaries(
    {"mpsearch_plan": st.sampled_from([1, 1, 2, "1", None]),
     "layers": st.one_of(json_values, st.dictionaries(st.text(max_size=6), st.one_of(
         json_values, st.fixed_dictionaries({"weight": st.one_of(spellings, json_values)},
                                            optional={"act": st.one_of(spellings, json_values)})), max_size=4))},
    optional={"task": json_values, "metadata": json_values},
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(plan_like, json_values))
def test_plan_json(data):
    try:
        text = json.dumps(data)
    except (ValueError, TypeError):
        return
    try:
        p = Plan.from_json(text)
    except MpsearchError:
        return
    assert Plan.from_json(p.to_json()).layers == p.layers


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_plan_text(text):
    try:
        Plan.from_json(text)
    except MpsearchError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.dictionaries(st.text(max_size=15), json_values, max_size=4),
                 st.dictionaries(st.sampled_from(sorted(OptimizeConfig.__dataclass_fields__)), json_values, max_size=6)))
def test_config(data):
    try:
        OptimizeConfig.from_dict(data)
    except MpsearchError:
        pass


budget_like = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A(latency|lat|weight_bytes|weight|memory|bops|energy|peak_act_bytes|[a-z_]{0,8})"
                  r"(=|<=|<)?-?[0-9.e+-]{0,8}(x|%|ms|us|s|kb|mb|gb|b|j|mj)?(:[a-z0-9/]{0,10})?\Z", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(budget_like)
def test_budget_spelling(text):
    from mpsearch.search import parse_budget

    try:
        b = parse_budget(text)
    except MpsearchError:
        return
    assert math.isfinite(b.value) and b.value > 0
    back = parse_budget(str(b))  # the canonical spelling reads back to the same budget (6 significant digits)
    assert (back.metric, back.relative, back.baseline) == (b.metric, b.relative, b.baseline)
    assert math.isclose(back.value, b.value, rel_tol=1e-5)
