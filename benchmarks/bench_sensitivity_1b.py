"""Issue 10, part 2: per-layer Hutchinson Hessian traces of a ~1B-parameter decoder-only transformer.

The model is defined here in plain torch and randomly initialised (weights do not matter for timing; no
downloads): d_model 2048, 16 layers, 16 heads, SwiGLU FFN 5632, vocab 32000, untied LM head, RMSNorm,
causal softmax attention written out (flash/SDPA kernels have no double backward). Calibration data are
random token sequences. ``sensitivity.compute_sensitivity`` runs unchanged on it (joint probing: one
double backward per probe gives every layer's diagonal-block trace estimate; ``probes_per_batch`` probes
share one forward and first backward per micro-batch; per-layer stopping at RSE < tol).

Writes a JSON (wall time, sampling time, per-layer traces +- 95% CI, RSE, probes, peak GPU memory) to
--out. Run on the H100 (device tool):
    python benchmarks/bench_sensitivity_1b.py --device cuda --out $OUT/sensitivity_1b_h100.json
and a CPU smoke test of the same code path with a tiny config:
    .venv/bin/python benchmarks/bench_sensitivity_1b.py --tiny --device cpu --out /tmp/s1b_tiny.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mpsearch.graph import build_layer_graph  # noqa: E402
from mpsearch.plan import parse_candidates  # noqa: E402
from mpsearch.task import Task  # noqa: E402
from sensitivity import SensitivityConfig, compute_sensitivity  # noqa: E402


@dataclass
class LMConfig:
    vocab: int = 32000
    d_model: int = 2048
    layers: int = 16
    heads: int = 16
    ffn: int = 5632
    max_seq: int = 512


TINY = LMConfig(vocab=512, d_model=64, layers=2, heads=4, ffn=176, max_seq=32)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Block(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.heads, self.dh = c.heads, c.d_model // c.heads
        self.attn_norm = RMSNorm(c.d_model)
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.o_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.mlp_norm = RMSNorm(c.d_model)
        self.gate_proj = nn.Linear(c.d_model, c.ffn, bias=False)
        self.up_proj = nn.Linear(c.d_model, c.ffn, bias=False)
        self.down_proj = nn.Linear(c.ffn, c.d_model, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s = x.size(0), x.size(1)
        h = self.attn_norm(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, self.dh).transpose(1, 2)

        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        scores = (q @ k.transpose(-1, -2)).float() * (1.0 / math.sqrt(self.dh))
        att = scores.masked_fill(mask, float("-inf")).softmax(-1).to(v.dtype)
        x = x + self.o_proj((att @ v).transpose(1, 2).reshape(b, s, -1))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class DecoderLM(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.vocab, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab, bias=False)
        self.register_buffer("causal", torch.ones(c.max_seq, c.max_seq, dtype=torch.bool).triu(1), persistent=False)
        for name, p in self.named_parameters():  # GPT-2 style init; residual outputs scaled by depth
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * c.layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = tokens.size(1)
        mask = self.causal[:s, :s]
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.lm_head(self.norm(x))


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (mean over tokens, so micro-batching is exact), in fp32."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


def make_task(c: LMConfig, device: torch.device, dtype: torch.dtype, n_batches: int, batch: int, seq: int,
              seed: int) -> Task:
    torch.manual_seed(seed)
    with torch.device(device):
        model = DecoderLM(c)
    model = model.to(dtype).eval()
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    batches = [torch.randint(0, c.vocab, (batch, seq + 1), generator=gen, device=device) for _ in range(n_batches)]
    return Task("decoder-lm-random", model, (batches[0][:1, :-1],), batches, evaluate=lambda m: 0.0,
                loss=lm_loss, metric_name="none", forward=lambda m, b: m(b[:, :-1]), logits=lambda m, b: m(b[:, :-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke test of the same path)")
    ap.add_argument("--batches", type=int, default=8, help="calibration batches")
    ap.add_argument("--batch", type=int, default=8, help="sequences per calibration batch")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--probes-per-batch", type=int, default=8)
    ap.add_argument("--tol", type=float, default=0.1)
    ap.add_argument("--min-samples", type=int, default=16)
    ap.add_argument("--max-samples", type=int, default=20000)
    ap.add_argument("--atol", type=float, default=None, help="absolute stop: sem <= atol x max |trace|")
    ap.add_argument("--modes", default="per-layer", help="comma list of per-layer, joint (Hutchinson), ggn (Gauss-Newton)")
    ap.add_argument("--budgets", default="420", help="sampling time budget (s) per mode, comma list")
    ap.add_argument("--runs", default=None, help="instead of --modes/--budgets: comma list of mode:dtype:budget_s")
    ap.add_argument("--samples", action="store_true", help="store every layer's raw Hutchinson samples")
    ap.add_argument("--strict-fp32", action="store_true", help="float32 runs without TF32 matmuls")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="benchmarks/sensitivity_1b.json")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    c = TINY if args.tiny else LMConfig()
    seq = min(args.seq, c.max_seq)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    task = make_task(c, device, dtype, args.batches, args.batch, seq, seed=0)
    graph = build_layer_graph(task.model, task.example_input)
    n_params = sum(p.numel() for p in task.model.parameters())
    t_setup = time.perf_counter() - t0
    print(f"model: {n_params / 1e9:.3f} B params, {len(graph)} Linear layers, setup {t_setup:.1f} s", flush=True)

    results: dict = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu"),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "model": {**asdict(c), "params": n_params, "linear_layers": len(graph)},
        "data": {"calib_batches": args.batches, "seqs_per_batch": args.batch, "seq_len": seq,
                 "tokens_per_batch": args.batch * seq, "micro_batch": args.micro_batch},
        "setup_s": t_setup,
        "runs": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    specs = [(m, args.dtype, float(b)) for m, b in zip(args.modes.split(","), args.budgets.split(","))]
    if args.runs:
        specs = [(m, dt, float(b)) for m, dt, b in (r.split(":") for r in args.runs.split(","))]
    for mode, dt, budget in specs:
        if dt != args.dtype:  # same seeds: the same weights (rounded), data and probes in another dtype
            del task
            if cuda:
                torch.cuda.empty_cache()
            args.dtype = dt
            if cuda and dt == "float32" and args.strict_fp32:
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
            task = make_task(c, device, getattr(torch, dt), args.batches, args.batch, seq, seed=0)
        name = mode if len(specs) == 1 or not args.runs else f"{mode}:{dt}"
        tf32 = bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False
        results["runs"][name] = {"dtype": dt, "tf32_matmul": tf32, **run_mode(task, graph, args, mode, budget, device)}
        out.write_text(json.dumps(results, indent=1))  # after each run: partial results survive a timeout
        brief = {k: v for k, v in results["runs"][name].items() if k not in ("layers", "samples")}
        print(json.dumps(brief, indent=1), flush=True)


def run_mode(task: Task, graph, args, mode: str, budget: float, device: torch.device) -> dict:
    """One compute_sensitivity run: ``per-layer`` (one HVP per layer and probe: exact block-diagonal
    probes), ``joint`` (one HVP per probe for all layers; cross-layer terms add variance) or ``ggn``
    (Gauss-Newton traces by label sampling: one plain backward per probe for all layers)."""
    cuda = device.type == "cuda"
    method = "ggn" if mode == "ggn" else "hutchinson"
    cfg = SensitivityConfig(method=method, joint=(mode == "joint"), act_hessian=False, tol=args.tol,
                            min_samples=args.min_samples, max_samples=args.max_samples,
                            micro_batch=args.micro_batch, device=args.device, probes_per_batch=args.probes_per_batch,
                            atol=args.atol, time_budget_s=budget)
    marks: dict[str, float] = {}
    last_print = [0.0]
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t1 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        marks.setdefault(f"{stage}_start", now)
        marks[f"{stage}_end"] = now
        if stage == method and now - last_print[0] > 20:
            last_print[0] = now
            print(f"  [{mode} {now - t1:6.1f} s] {method}: {done}/{total} layers done", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cache = tmp if args.samples else None  # the stage checkpoint holds the raw samples
        table = compute_sensitivity(task, graph, parse_candidates(["int4", "int8"]), cfg, progress=progress,
                                    cache_dir=cache)
        raw = None
        if cache:
            ck = next(Path(tmp).glob(f"sensitivity-*/{method}.json"))
            raw = {k[2:]: v for k, v in json.loads(ck.read_text())["q"].items() if k.startswith("w|")}
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t1
    sampling = marks.get(f"{method}_end", t1) - marks.get(f"{method}_start", t1)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    stats = table.layer_stats
    ref = max(abs(s["trace"]) for s in stats.values())
    layers = {}
    for n, s in stats.items():
        sem = s["trace_std"] / math.sqrt(max(s["trace_samples"], 1))
        layers[n] = {"params": s["params"], "trace": s["trace"], "ci95": s["trace_ci95"], "rse": s["trace_rse"],
                     "std_per_probe": s["trace_std"], "cv_per_probe": s["trace_std"] / abs(s["trace"]) if s["trace"] else None,
                     "samples": s["trace_samples"], "stop": s["trace_stop"], "negative": s["trace_negative"],
                     "sem_over_max_trace": sem / ref if ref else None}
    rses = [s["trace_rse"] for s in stats.values()]
    cvs = sorted(v["cv_per_probe"] for v in layers.values() if v["cv_per_probe"] is not None)
    probes = table.settings["samples_drawn"]
    res = {
        "mode": mode,
        "config": {k: v for k, v in cfg.cache_dict().items() if k not in ("percentiles", "extra")},
        "wall_s": wall,
        "sampling_s": sampling,
        "probes": probes,
        "s_per_probe": sampling / max(probes, 1),
        "peak_gpu_mib": peak,
        "layers_at_tol": sum(r < args.tol for r in rses),
        "layers_total": len(rses),
        "stop_reasons": {r: sum(s["trace_stop"] == r for s in stats.values()) for r in sorted({s["trace_stop"] for s in stats.values()})},
        "median_rse": statistics.median(rses),
        "max_rse": max(rses),
        "median_cv_per_probe": statistics.median(cvs) if cvs else None,
        "negative_traces": sum(bool(s["trace_negative"]) for s in stats.values()),
        "max_sem_over_max_trace": max(v["sem_over_max_trace"] or 0.0 for v in layers.values()),
        "layers": layers,
    }
    if raw is not None:
        res["samples"] = raw
    worst = sorted(layers.items(), key=lambda kv: -kv[1]["rse"])[:6]
    for n, v in worst:
        print(f"  {mode} {n}: trace {v['trace']:.4g} +- {v['ci95']:.2g}  rse {v['rse']:.3f}  n {v['samples']}  {v['stop']}")
    return res


if __name__ == "__main__":
    main()
