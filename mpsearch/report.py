"""Plots and the HTML report, regenerated from a run directory alone (no recomputation).

matplotlib PNGs for the README and quick looks; one self-contained plotly HTML (JS inlined, so it opens
offline) with the frontier, baselines and verified points, the per-layer format map, sensitivity bars with
95% CIs and predicted vs measured latency where a measured cost table exists.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mpsearch.atomic import atomic_write_text  # noqa: E402
from mpsearch.errors import MpsearchError  # noqa: E402
from mpsearch.search.compare import compare_with_baselines  # noqa: E402

METRIC_LABELS = {
    "weight_bytes": "weight memory (bytes)", "latency_s": "latency (s)", "bops": "BOPs",
    "energy_j": "energy (J)", "peak_act_bytes": "peak activation memory (bytes)", "act_bytes": "activation bytes",
}


def _load(run: Path, name: str) -> Any:
    p = run / name
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    return data["value"] if isinstance(data, dict) and "key" in data and "value" in data else data


def _series(points: list[dict[str, Any]], metric: str) -> tuple[list[float], list[float]]:
    pts = sorted(points, key=lambda p: p["totals"][metric])
    return [p["totals"][metric] for p in pts], [p["score"] for p in pts]


def frontier_png(frontier: dict[str, Any], path: Path) -> Path:
    metric = frontier["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs, ys = _series(frontier["frontier"], metric)
    ax.plot(xs, ys, "o-", color="C0", label="mpsearch ILP frontier (measured)")
    if frontier.get("hawq_v3"):
        hx, hy = _series(frontier["hawq_v3"], metric)
        ax.plot(hx, hy, "s--", color="C2", alpha=0.8, label="HAWQ-V3 INT4/8 ILP")
    if frontier.get("random"):
        rx, ry = _series(frontier["random"], metric)
        ax.scatter(rx, ry, marker=".", color="0.6", label="random search")
    opt = frontier.get("optuna") or {}
    if opt.get("points"):
        ox, oy = _series(opt["points"], metric)
        ax.scatter(ox, oy, marker="x", color="C4", label="Optuna refinement")
    for i, (label, b) in enumerate(frontier.get("baselines", {}).items()):
        ax.scatter([b["totals"][metric]], [b["score"]], marker="*", s=160, color=f"C{i + 5}", zorder=5, label=label)
    ax.axhline(frontier["float_score"], color="k", lw=0.8, ls=":", label="float32")
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    ax.set_ylabel(frontier.get("metric_name", "score"))
    ax.set_xscale("log")
    lo = min([frontier["float_score"] - 0.1] + [y for y in ys if y > frontier["float_score"] - 0.3])
    ax.set_ylim(max(0.0, lo), min(1.0, frontier["float_score"] + 0.02) if frontier["float_score"] <= 1 else None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Pareto frontier: accuracy vs cost")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def layers_png(sens: dict[str, Any], plan: dict[str, Any], path: Path) -> Path:
    names = list(plan["layers"])
    stats = sens.get("layer_stats", {})
    trace = [stats.get(n, {}).get("trace", 0.0) for n in names]
    ci = [stats.get(n, {}).get("trace_ci95", 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4), dpi=120)
    ax.bar(range(len(names)), trace, yerr=ci, capsize=2, color="C0")
    for i, n in enumerate(names):
        ax.text(i, max(trace[i], 0) + (ci[i] or 0), plan["layers"][n]["weight"], ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("Hessian trace (mean ± 95% CI)")
    ax.set_yscale("symlog")
    ax.set_title("Per-layer sensitivity and chosen weight format")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _plotly_html(run: Path, frontier: dict[str, Any], sens: dict[str, Any] | None, plan: dict[str, Any] | None,
                 costs: dict[str, Any] | None, parity: dict[str, Any] | None) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metric = frontier["metric"]
    figs: list[tuple[str, Any]] = []
    f = go.Figure()
    xs, ys = _series(frontier["frontier"], metric)
    hover = [f"Ω={p['omega']:.3g}" for p in sorted(frontier["frontier"], key=lambda p: p["totals"][metric])]
    f.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name="mpsearch ILP frontier (measured)", text=hover))
    if frontier.get("hawq_v3"):
        hx, hy = _series(frontier["hawq_v3"], metric)
        f.add_trace(go.Scatter(x=hx, y=hy, mode="lines+markers", name="HAWQ-V3 INT4/8 ILP", line={"dash": "dash"}))
    if frontier.get("random"):
        rx, ry = _series(frontier["random"], metric)
        f.add_trace(go.Scatter(x=rx, y=ry, mode="markers", name="random search", marker={"color": "gray", "size": 5}))
    opt = frontier.get("optuna") or {}
    if opt.get("points"):
        ox, oy = _series(opt["points"], metric)
        f.add_trace(go.Scatter(x=ox, y=oy, mode="markers", name="Optuna refinement", marker={"symbol": "x"}))
    for label, b in frontier.get("baselines", {}).items():
        f.add_trace(go.Scatter(x=[b["totals"][metric]], y=[b["score"]], mode="markers", name=label,
                               marker={"symbol": "star", "size": 14}))
    f.add_hline(y=frontier["float_score"], line_dash="dot", annotation_text="float32")
    f.update_layout(title="Pareto frontier (every point evaluated for real)", xaxis_title=METRIC_LABELS.get(metric, metric),
                    yaxis_title=frontier.get("metric_name", "score"), xaxis_type="log", height=480)
    figs.append(("frontier", f))
    if plan and sens:
        names = list(plan["layers"])
        stats = sens.get("layer_stats", {})
        fs = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("Hessian trace ± 95% CI", "chosen weight / act format"))
        fs.add_trace(go.Bar(x=names, y=[stats.get(n, {}).get("trace", 0) for n in names], name="trace",
                            error_y={"type": "data", "array": [stats.get(n, {}).get("trace_ci95", 0) for n in names]}), row=1, col=1)
        fmts = [plan["layers"][n]["weight"] for n in names]
        acts = [plan["layers"][n].get("act", "fp32") for n in names]
        fs.add_trace(go.Scatter(x=names, y=fmts, mode="markers", marker={"size": 12}, name="weight format",
                                text=[f"act {a}" for a in acts]), row=2, col=1)
        fs.update_layout(height=600, title="Per-layer sensitivity and format map")
        figs.append(("layers", fs))
    measured = (costs or {}).get("extra", {}).get("calibration", {}).get("per_layer")
    if measured:
        fm = go.Figure(go.Scatter(x=[r["predicted_s"] for r in measured], y=[r["measured_s"] for r in measured],
                                  mode="markers", text=[r.get("layer", "") for r in measured]))
        fm.update_layout(title="Predicted vs measured latency per layer", xaxis_title="predicted (s)",
                         yaxis_title="measured (s)", xaxis_type="log", yaxis_type="log")
        figs.append(("latency", fm))
    parts = []
    for i, (name, fig) in enumerate(figs):
        parts.append(f'<div class="fig" id="fig-{name}">' + fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                                                         div_id=f"plot-{name}") + "</div>")
    baselines_html = _baselines_table(frontier)
    ver_html = ""
    verify = _load(run, "verify.json")
    if verify and verify.get("points"):
        vrows = "".join(
            f"<tr><td>{i + 1}</td><td>{v['predicted'].get('omega', float('nan')):.3g}</td><td>{v['measured']['score']:.4f}</td>"
            f"<td>{v['predicted'].get('latency_s', float('nan')) * 1e6:.1f}</td><td>{v['measured']['latency_s'] * 1e6:.1f}</td>"
            f"<td>{v['predicted'].get('weight_bytes', float('nan')):.0f}</td><td>{v['measured']['weight_bytes']:.0f}</td></tr>"
            for i, v in enumerate(verify["points"]))
        sm = verify.get("summary", {})
        ver_html = (f"<h2>Verified frontier points (compiled for {html.escape(str(sm.get('target')))}, timed here)</h2>"
                    f"<p>Latency rank agreement (Spearman, predicted by cost target {html.escape(str(sm.get('cost_target')))} vs measured): "
                    f"{sm.get('latency_spearman', float('nan')):.2f}; packed weight bytes within {sm.get('max_weight_bytes_error', float('nan')):.1%} of predicted.</p>"
                    "<table id='verified'><tr><th>#</th><th>predicted Ω</th><th>measured score</th><th>predicted latency µs</th>"
                    f"<th>measured latency µs</th><th>predicted weight bytes</th><th>artifact weight bytes</th></tr>{vrows}</table>")
    par = ""
    if parity:
        check = (f"parity not checked here: {html.escape(str(parity['deferred']))}" if parity.get("deferred") else
                 f"max |artifact − simulation| = {parity.get('max_abs_diff')} over {parity.get('samples')} inputs")
        par = (f"<p>Compiled artifact <code>{html.escape(str(parity.get('artifact')))}</code> ({html.escape(str(parity.get('target')))}): "
               f"{check}.</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>mpsearch report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>mpsearch report — {html.escape(str(frontier.get('task', run.name)))}</h1>
<p>Float32 {html.escape(frontier.get('metric_name', 'score'))}: {frontier['float_score']:.4f}. ILP frontier over
<b>{html.escape(metric)}</b>: {len(frontier['frontier'])} points, solved in {frontier.get('solve_seconds', 0):.2f}s.</p>
{baselines_html}{par}{ver_html}
{''.join(parts)}</body></html>"""


def _baselines_table(frontier: dict[str, Any]) -> str:
    """Each baseline next to the best measured mpsearch point at no more cost: does the search pay off here?"""
    cmp = compare_with_baselines(frontier, with_optuna=True)
    if not cmp.rows:
        return ""
    metric, name = frontier["metric"], html.escape(frontier.get("metric_name", "score"))
    cells = []
    for r in cmp.rows:
        best = "–" if r.best is None else f"{r.best['score']:.4f} at {r.best['totals'][metric]:.4g}"
        diff = "–" if r.difference is None else f"{r.difference:+.4f}"
        cells.append(f"<tr><td>{html.escape(r.baseline)}</td><td>{r.cost:.4g}</td><td>{r.score:.4f}</td><td>{best}</td>"
                     f"<td>{diff}</td><td>{html.escape(r.verdict)}</td></tr>")
    return (f"<h2>Baselines</h2><p>mpsearch (ILP frontier and Optuna, {cmp.pool} measured points) at least as accurate "
            f"at no more {html.escape(metric)}: <b>{cmp.wins_or_ties}/{len(cmp.rows)}</b> baseline points "
            f"(loses {cmp.losses}, none that cheap {cmp.no_point}). Every score is a real evaluation on held-out data; "
            f"a difference of a few test examples may be noise.</p>"
            f"<table id='baselines'><tr><th>baseline</th><th>{html.escape(metric)}</th><th>{name}</th>"
            f"<th>best mpsearch {name} at ≤ cost</th><th>difference</th><th>verdict</th></tr>{''.join(cells)}</table>")


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Regenerate every figure and report.html from the files in ``run_dir``."""
    run = Path(run_dir)
    frontier = _load(run, "frontier.json")
    if frontier is None:
        raise MpsearchError(f"{run} has no frontier.json", hint="run 'mpsearch optimize' (or 'mpsearch search') first")
    opt = _load(run, "optuna.json")
    if opt:
        frontier["optuna"] = opt
    sens, costs, parity = _load(run, "sensitivity.json"), _load(run, "costs.json"), _load(run, "parity.json")
    plan = json.loads((run / "plan.json").read_text()) if (run / "plan.json").is_file() else None
    frontier.setdefault("task", (plan or {}).get("task", run.name))
    paths = {"frontier_png": frontier_png(frontier, run / "frontier.png")}
    if sens and plan:
        paths["layers_png"] = layers_png(sens, plan, run / "layers.png")
    paths["html"] = atomic_write_text(run / "report.html", _plotly_html(run, frontier, sens, plan, costs, parity))
    return paths
