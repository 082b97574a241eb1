"""The MiniLM task's data: dpkg status / Translation-en parsing and the versioned snapshot (no model load)."""

from __future__ import annotations

from mpsearch.tasks.minilm import DATA_FILE, load_pairs, parse_dpkg_status, snapshot_pairs

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


TRANSLATION = """Package: qux
Description-md5: 0123456789abcdef0123456789abcdef
Description-en: queue utility for qux jobs
 Qux queues jobs.
 .
 Second paragraph of qux.

Package: quux
Description-md5: fedcba9876543210fedcba9876543210
Description-en: quux without a long text
"""


def test_parse_translation_index_reads_description_en():
    pairs = parse_dpkg_status(TRANSLATION)
    assert pairs == [{"package": "qux", "query": "queue utility for qux jobs", "doc": "Qux queues jobs. Second paragraph of qux."}]


def test_snapshot_pairs_dedupes_and_samples_deterministically(tmp_path):
    src = tmp_path / "status"
    stanzas = [f"Package: p{i:02d}\nDescription: tool number {i % 7}\n Long text for package number {i}, long enough.\n"
               for i in range(30)]
    src.write_text("\n".join(stanzas))
    a = load_pairs(snapshot_pairs(src, tmp_path / "a.jsonl", max_pairs=5))
    b = load_pairs(snapshot_pairs(src, tmp_path / "b.jsonl", max_pairs=5))
    assert a == b and len(a) == 5
    assert len({p["query"] for p in a}) == 5  # 7 distinct queries: duplicates of a query are dropped first
    assert [p["package"] for p in a] == sorted(p["package"] for p in a)


def test_snapshot_is_unique_and_small():
    pairs = load_pairs(DATA_FILE)
    assert 1000 <= len(pairs) <= 2000  # >= 1000 held out after 64 calibration pairs: resolves ~1-point differences
    assert len({p["query"] for p in pairs}) == len(pairs) == len({p["doc"] for p in pairs})
    assert DATA_FILE.stat().st_size < 600_000
