"""Are MiniLM's baseline "losses" real? Paired per-query comparisons, and the same plans on fresh pairs.

``bench_baselines.py`` compares recall@1 on the task's held-out pairs; a difference of a few queries there can
be sampling noise. For each (baseline, mpsearch point) pair given here this script re-evaluates both plans per
query and reports

* the paired difference with a 95 % bootstrap interval over the held-out queries, and McNemar's exact p
  (only the queries on which the two plans disagree carry information);
* both plans' recall@1 on *fresh* pairs: Debian packages of ``--fresh`` (this machine's live
  ``/var/lib/dpkg/status`` by default, or an uncompressed apt ``Translation-en`` index: 64k packages)
  whose descriptions are not in the task's snapshot (neither calibration nor held-out data), at most
  ``--fresh-pairs`` of them (a seeded sample), with the same tokenisation; a gain that is a property of the
  plan shows up there too, a lucky draw does not.

Plans are taken from a finished run directory (``mpsearch optimize minilm``): ``uniform int4``, ``hawq N``,
``random N`` (1-based, in the order ``bench_baselines.py`` lists them, by cost), ``frontier N`` (by cost),
``optuna N``, or ``float``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/diag_minilm_baselines.py runs/examples/minilm \\
        --pair "uniform int4" "frontier@5391360" --pair "random 9" "frontier@<=10930176"

``frontier@BYTES`` is the frontier point of exactly that weight_bytes, ``frontier@<=BYTES`` the best-scoring
one at no more (what bench_baselines compares with).

``--all`` instead re-scores every point of the run (ILP frontier, uniform, HAWQ-V3 and random plans; each
distinct plan once) on the fresh pairs only and prints ``bench_baselines.py``'s table with those scores: the
whole comparison repeated on data that no stage of the run has seen.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpsearch.pipeline import OptimizeConfig, open_session, plan_key  # noqa: E402
from mpsearch.plan import Plan  # noqa: E402
from mpsearch.search.compare import best_at_cost, mpsearch_points  # noqa: E402
from mpsearch.simulate import apply_plan  # noqa: E402
from mpsearch.tasks.minilm import RetrievalEvaluator, load_pairs, parse_dpkg_status  # noqa: E402


def frontier_value(run: Path) -> dict[str, Any]:
    d = json.loads((run / "frontier.json").read_text())
    fr = d["value"] if "value" in d and "key" in d else d
    opt = run / "optuna.json"
    if opt.is_file():
        fr["optuna"] = json.loads(opt.read_text())
    return fr


def pick(fr: dict[str, Any], spec: str) -> tuple[str, dict[str, Any] | None]:
    """(label, point) for a plan spec; point None = the float model."""
    metric = fr["metric"]
    by_cost = lambda pts: sorted(pts, key=lambda p: p["totals"][metric])  # noqa: E731
    if spec == "float":
        return spec, None
    if spec.startswith("uniform "):
        return spec, fr["baselines"][spec]
    if spec.startswith("frontier@<="):
        cap = float(spec.split("<=")[1])
        best = best_at_cost(mpsearch_points(fr), metric, cap)
        if best is None:
            raise SystemExit(f"error: no mpsearch point at {metric} <= {cap:.0f}")
        return f"mpsearch best <= {cap:.0f}", best
    if spec.startswith("frontier@"):
        want = float(spec.split("@")[1])
        pts = [p for p in fr["frontier"] if abs(p["totals"][metric] - want) < 0.5]
        if not pts:
            raise SystemExit(f"error: no frontier point at {metric} = {want:.0f}")
        return spec, max(pts, key=lambda p: p["score"])
    kind, _, idx = spec.partition(" ")
    lists = {"hawq": fr["hawq_v3"], "random": by_cost(fr["random"]), "frontier": by_cost(fr["frontier"]),
             "optuna": by_cost((fr.get("optuna") or {}).get("points", []))}
    if kind not in lists or not idx.isdigit():
        raise SystemExit(f"error: unknown plan spec {spec!r}")
    return spec, lists[kind][int(idx) - 1]


def fresh_evaluator(task_tok: Any, snapshot: list[dict[str, str]], max_len: int, source: Path,
                    max_pairs: int) -> RetrievalEvaluator | None:
    """Pairs of ``source`` that share no package, query or document with the task's snapshot."""
    if not source.is_file():
        return None
    seen_q = {p["query"] for p in snapshot}
    seen_d = {p["doc"] for p in snapshot}
    seen_pkg = {p["package"] for p in snapshot}
    fresh, fq, fd = [], set(), set()
    for p in sorted(parse_dpkg_status(source.read_text(errors="replace")), key=lambda p: p["package"]):
        if p["package"] in seen_pkg or p["query"] in seen_q or p["doc"] in seen_d or p["query"] in fq or p["doc"] in fd:
            continue
        fq.add(p["query"])
        fd.add(p["doc"])
        fresh.append(p)
    if len(fresh) < 20:
        return None
    if len(fresh) > max_pairs:
        fresh = random.Random(0).sample(fresh, max_pairs)

    def enc(texts: list[str]) -> dict[str, torch.Tensor]:
        out = task_tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    return RetrievalEvaluator(enc([p["query"] for p in fresh]), enc([p["doc"] for p in fresh]))


def hits(evaluator: RetrievalEvaluator, model: torch.nn.Module) -> np.ndarray:
    """Per query, 1 where the model retrieves its own document first (recall@1's terms)."""
    return (evaluator.ranks(model) < 1).numpy()


def rescore_all(run: Path, fr: dict[str, Any], s: Any, fresh: RetrievalEvaluator) -> None:
    """Every point's score := its recall@1 on the fresh pairs; then bench_baselines' comparison and table."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_baselines

    fr = json.loads(json.dumps(fr))  # a private copy: scores are overwritten
    fr["_summary"] = {"task": "minilm"}
    points = [*fr["frontier"], *(fr.get("baselines") or {}).values(), *(fr.get("hawq_v3") or []), *(fr.get("random") or [])]
    scores: dict[str, float] = {}
    for p in points:
        plan = Plan.from_dict(p["plan"])
        key = plan_key(plan)  # uniform int8 and the last HAWQ-V3 point are often one plan: evaluate it once
        if key not in scores:
            scores[key] = float(hits(fresh, apply_plan(s.task.model, plan, s.act_amax)).mean())
        p["score"] = scores[key]
    fr["float_score"] = float(hits(fresh, s.task.model).mean())
    rows, stats = bench_baselines.compare(fr)
    n = fresh.queries["input_ids"].shape[0]
    print(f"{len(scores)} distinct plans re-scored on {n} fresh pairs (not in the task's snapshot)")
    print()
    print(bench_baselines.markdown(run, fr, rows, stats).replace("on held-out data", f"on {n} fresh pairs"))


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar (binomial) p-value for discordant counts."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--pair", nargs=2, action="append", metavar=("BASELINE", "MPSEARCH"), default=[])
    ap.add_argument("--all", action="store_true", help="re-score every point on the fresh pairs: bench_baselines' table")
    ap.add_argument("--boot", type=int, default=10000)
    ap.add_argument("--fresh", type=Path, default=Path("/var/lib/dpkg/status"),
                    help="dpkg status file or uncompressed Translation-en index to draw fresh pairs from")
    ap.add_argument("--fresh-pairs", type=int, default=2000, help="at most this many fresh pairs (seeded sample)")
    args = ap.parse_args()
    if not args.pair and not args.all:
        ap.error("give --pair BASELINE MPSEARCH (repeatable) or --all")
    torch.set_num_threads(1)
    cfg = OptimizeConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    s = open_session(cfg, resume=True)
    if s.task.name != "minilm":
        raise SystemExit("error: this diagnostic is for the minilm task")
    fr = frontier_value(args.run)
    ev: RetrievalEvaluator = s.task.evaluate
    from mpsearch.tasks.minilm import load_minilm

    _, tok = load_minilm()
    fresh = fresh_evaluator(tok, load_pairs(), int(s.task.metadata.get("max_len", 64)), args.fresh, args.fresh_pairs)
    if args.all:
        if fresh is None:
            raise SystemExit(f"error: fewer than 20 fresh pairs in {args.fresh}")
        rescore_all(args.run, fr, s, fresh)
        return
    cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    def correct(label: str, pt: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray | None]:
        if label not in cache:
            model = s.task.model if pt is None else apply_plan(s.task.model, Plan.from_dict(pt["plan"]), s.act_amax)
            held = hits(ev, model)
            new = hits(fresh, model) if fresh is not None else None
            cache[label] = (held, new)
        return cache[label]

    rng = np.random.default_rng(0)
    print(f"run {args.run}; held-out pairs {ev.queries['input_ids'].shape[0]}; "
          f"fresh pairs {fresh.queries['input_ids'].shape[0] if fresh is not None else 0}")
    print()
    print("| baseline | its held-out recall@1 | mpsearch point | its held-out recall@1 | paired diff (95% bootstrap) | "
          "McNemar p | fresh: baseline | fresh: mpsearch | fresh: float |")
    print("|---|---|---|---|---|---|---|---|---|")
    fl_held, fl_new = correct("float", None)
    for bspec, mspec in args.pair:
        bl, bpt = pick(fr, bspec)
        ml, mpt = pick(fr, mspec)
        bh, bn = correct(bl, bpt)
        mh, mn = correct(ml, mpt)
        d = mh.astype(float) - bh.astype(float)
        idx = rng.integers(0, len(d), size=(args.boot, len(d)))
        lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
        p = mcnemar_p(int(((mh == 1) & (bh == 0)).sum()), int(((mh == 0) & (bh == 1)).sum()))
        cost = lambda pt: "" if pt is None else f" ({pt['totals'][fr['metric']] / 1e6:.3f} MB)"  # noqa: E731
        fresh_cols = (f"{bn.mean():.4f} | {mn.mean():.4f} | {fl_new.mean():.4f}" if bn is not None else "- | - | -")
        print(f"| {bl}{cost(bpt)} | {bh.mean():.4f} | {ml}{cost(mpt)} | {mh.mean():.4f} | {d.mean():+.4f} "
              f"[{lo:+.4f}, {hi:+.4f}] | {p:.3f} | {fresh_cols} |")
    print()
    print(f"float32: held-out {fl_held.mean():.4f}" + (f", fresh {fl_new.mean():.4f}" if fl_new is not None else ""))


if __name__ == "__main__":
    main()
