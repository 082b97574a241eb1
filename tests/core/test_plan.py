"""Plan JSON round trip and rejection of malformed plans."""

from __future__ import annotations

import json

import pytest

from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan, parse_candidates


def test_candidate_parse():
    assert Candidate.parse("int4").key == "int4/fp32"
    assert Candidate.parse("INT8/int8") == Candidate("int8", "int8")
    assert [c.key for c in parse_candidates(["int8", "int8/fp32", "int4"])] == ["int8/fp32", "int4/fp32"]
    with pytest.raises(MpsearchError):
        Candidate.parse("int8/int8/int8")
    with pytest.raises(MpsearchError, match="unknown format"):
        Candidate.parse("int99")


def test_roundtrip(tmp_path):
    p = Plan({"a": Candidate("int4"), "b.c": Candidate("int8", "int8")}, task="t", metadata={"omega": 1.5})
    path = p.save(tmp_path / "plan.json")
    q = Plan.load(path, layer_names=["a", "b.c"])
    assert q.layers == p.layers and q.task == "t" and q.metadata == {"omega": 1.5}
    assert json.loads(path.read_text())["mpsearch_plan"] == 1


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "malformed plan JSON"),
        ("[]", "top level"),
        ('{"mpsearch_plan": 99, "layers": {"a": {"weight": "int8"}}}', "version"),
        ('{"mpsearch_plan": 1, "layers": {}}', "non-empty"),
        ('{"mpsearch_plan": 1, "layers": {"a": "int8"}}', "needs a 'weight'"),
        ('{"mpsearch_plan": 1, "layers": {"a": {"weight": "int77"}}}', "unknown format"),
        ('{"mpsearch_plan": 1, "layers": {"a": {"weight": "int8", "act": 3}}}', "non-string"),
    ],
)
def test_malformed(text, match):
    with pytest.raises(MpsearchError, match=match):
        Plan.from_json(text)


def test_plan_must_match_model():
    p = Plan({"a": Candidate("int8")})
    with pytest.raises(MpsearchError, match="does not match the model"):
        Plan.from_dict(p.to_dict(), layer_names=["a", "b"])


def test_missing_file(tmp_path):
    with pytest.raises(MpsearchError, match="not found"):
        Plan.load(tmp_path / "nope.json")
