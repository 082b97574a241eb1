"""The MiniLM task's data: dpkg status parsing and the versioned snapshot (no model load: that is benchmarked)."""

from __future__ import annotations

from mpsearch.tasks.minilm import DATA_FILE, load_pairs, parse_dpkg_status

STATUS = """Package: foo
Status: install ok installed
Description: tool that frobnicates widgets
 Foo frobnicates widgets quickly.
 .
 It also has a second paragraph.

Package: bar
Description: no long text here

Package: baz
Version: 1.0
Description: library for baz
 Baz provides the baz protocol implementation for everyone.
Homepage: https://example.org
"""


def test_parse_dpkg_status_pairs_short_and_long_descriptions():
    pairs = parse_dpkg_status(STATUS)
    assert [p["package"] for p in pairs] == ["foo", "baz"]
    assert pairs[0]["query"] == "tool that frobnicates widgets"
    assert pairs[0]["doc"] == "Foo frobnicates widgets quickly. It also has a second paragraph."
    assert pairs[1]["doc"] == "Baz provides the baz protocol implementation for everyone."


def test_snapshot_is_unique_and_small():
    pairs = load_pairs(DATA_FILE)
    assert 300 <= len(pairs) <= 1000
    assert len({p["query"] for p in pairs}) == len(pairs) == len({p["doc"] for p in pairs})
    assert DATA_FILE.stat().st_size < 400_000
