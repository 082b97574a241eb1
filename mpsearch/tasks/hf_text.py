"""Hugging Face model directory input path: a local text encoder (``config.json`` + weights) as a Task.

Sentence embeddings are the attention-masked mean of ``last_hidden_state``, L2-normalised (the
sentence-transformers recipe, shared with the built-in ``minilm`` task). Two kinds of task:

- with ``pairs_file`` (JSON lines with ``query`` and ``doc``): retrieval. The metric is recall@1 of each
  query's own document among all held-out documents; the loss InfoNCE over in-batch negatives.
- otherwise: embedding fidelity on texts (``texts_file``: ``.txt`` one text per line, or ``.jsonl`` with a
  ``text`` field; default: the Debian package descriptions shipped with mpsearch). The metric is the mean
  cosine between the model's and the float32 model's embeddings on held-out texts; the loss the MSE to the
  float32 embeddings of the calibration texts.

Everything is loaded with ``local_files_only=True``: nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.errors import MpsearchError
from mpsearch.task import Task
from mpsearch.tasks.minilm import DATA_FILE, RetrievalEvaluator, embed, forward_both, info_nce_logits, info_nce_loss


def load_hf_encoder(model_dir: str | Path) -> tuple[nn.Module, Any]:
    """Model and tokenizer from a local directory; eager attention (SDPA has no CPU double backward)."""
    d = Path(model_dir)
    if not d.is_dir():
        raise MpsearchError(f"Hugging Face model directory {str(d)!r} not found")
    if not (d / "config.json").is_file():
        raise MpsearchError(f"{str(d)!r} has no config.json; it is not a Hugging Face model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # unused pooler weights of sentence encoders are expected
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        except Exception as e:
            raise MpsearchError(f"cannot load a tokenizer from {str(d)!r}: {str(e).splitlines()[0]}") from None
        kw: dict[str, Any] = {"local_files_only": True, "attn_implementation": "eager"}
        try:
            model = AutoModel.from_pretrained(str(d), add_pooling_layer=False, **kw)
        except TypeError:  # architectures without a pooler do not take the argument
            model = AutoModel.from_pretrained(str(d), **kw)
        except MpsearchError:
            raise
        except Exception as e:
            raise MpsearchError(f"cannot load a model from {str(d)!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(level)
    return model.eval(), tok


def read_texts(path: str | Path) -> list[str]:
    """Texts from ``.txt`` (one per line) or ``.jsonl`` (``text`` field); blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise MpsearchError(f"texts file {str(p)!r} not found")
    lines = [l for l in p.read_text(errors="replace").splitlines() if l.strip()]
    if p.suffix == ".jsonl":
        try:
            texts = [str(json.loads(l)["text"]) for l in lines]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise MpsearchError(f"{str(p)!r}: every line must be a JSON object with a 'text' field ({e})") from None
    else:
        texts = [l.strip() for l in lines]
    return texts


def read_pairs(path: str | Path) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise MpsearchError(f"pairs file {str(p)!r} not found")
    try:
        pairs = [json.loads(l) for l in p.read_text(errors="replace").splitlines() if l.strip()]
        return [{"query": str(x["query"]), "doc": str(x["doc"])} for x in pairs]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MpsearchError(f"{str(p)!r}: every line must be a JSON object with 'query' and 'doc' ({e})") from None


def _fidelity_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return nn.functional.mse_loss(embed(model, batch["enc"]), batch["ref"])


def _fidelity_forward(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return embed(model, batch["enc"])


def hf_text_task(
    model_dir: str | Path,
    *,
    texts_file: str | Path | None = None,
    pairs_file: str | Path | None = None,
    max_len: int = 64,
    calib_size: int = 64,
    calib_batch: int = 16,
    eval_size: int | None = 256,
    seed: int = 0,
) -> Task:
    """Task for a local HF text encoder: retrieval with ``pairs_file``, else embedding fidelity on texts."""
    if calib_batch < 2 or calib_size < calib_batch:
        raise MpsearchError(f"need calib_size >= calib_batch >= 2, got {calib_size} and {calib_batch}")
    model, tok = load_hf_encoder(model_dir)

    def enc(texts: list[str]) -> dict[str, torch.Tensor]:
        out = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    rng = random.Random(seed)
    name = Path(model_dir).name or "hf-model"
    if pairs_file is not None:
        pairs = read_pairs(pairs_file)
        if len(pairs) < calib_size + 10:
            raise MpsearchError(f"{str(pairs_file)!r} has {len(pairs)} pairs; need at least calib_size + 10 = {calib_size + 10}")
        rng.shuffle(pairs)
        calib, held = pairs[:calib_size], pairs[calib_size:]
        held = held[:eval_size] if eval_size else held
        batches = [
            {"query": enc([p["query"] for p in calib[i : i + calib_batch]]), "doc": enc([p["doc"] for p in calib[i : i + calib_batch]])}
            for i in range(0, len(calib) - calib_batch + 1, calib_batch)
        ]
        evaluator = RetrievalEvaluator(enc([p["query"] for p in held]), enc([p["doc"] for p in held]))
        evaluator.reference = evaluator.embeddings(model)
        ex = enc([held[0]["doc"]])
        return Task(
            name=name, model=model, example_input=(ex["input_ids"], ex["attention_mask"]), calib_batches=batches,
            evaluate=evaluator, loss=info_nce_loss, logits=info_nce_logits, metric_name="recall@1", forward=forward_both,
            metadata={"source": "hf-dir", "model_dir": str(model_dir), "pairs_file": str(pairs_file),
                      "calib_pairs": len(batches) * calib_batch, "eval_pairs": len(held), "max_len": max_len,
                      "loss": "InfoNCE, in-batch negatives, scale 20"},
        )

    if texts_file is not None:
        texts = read_texts(texts_file)
        source = str(texts_file)
    else:
        texts = [t for p in read_pairs(DATA_FILE) for t in (p["query"], p["doc"])]
        source = f"{DATA_FILE.name} (Debian package descriptions)"
    if len(texts) < calib_size + 2:
        raise MpsearchError(f"{source!r} has {len(texts)} texts; need at least calib_size + 2 = {calib_size + 2}")
    rng.shuffle(texts)
    calib_texts, held = texts[:calib_size], texts[calib_size:]
    held = held[:eval_size] if eval_size else held
    with torch.no_grad():
        batches = []
        for i in range(0, len(calib_texts) - calib_batch + 1, calib_batch):
            e = enc(calib_texts[i : i + calib_batch])
            batches.append({"enc": e, "ref": embed(model, e)})
        held_enc = [enc(held[i : i + 64]) for i in range(0, len(held), 64)]
        reference = torch.cat([embed(model, e) for e in held_enc])

    @torch.no_grad()
    def evaluate(m: nn.Module) -> float:
        was = m.training
        m.eval()
        try:
            out = torch.cat([embed(m, e) for e in held_enc])
        finally:
            m.train(was)
        return float((out * reference).sum(1).mean())  # both L2-normalised: mean cosine

    ex = held_enc[0]
    return Task(
        name=name, model=model, example_input=(ex["input_ids"][:1], ex["attention_mask"][:1]), calib_batches=batches,
        evaluate=evaluate, loss=_fidelity_loss, metric_name="embedding fidelity (cosine to float32)",
        forward=_fidelity_forward,
        metadata={"source": "hf-dir", "model_dir": str(model_dir), "texts": source,
                  "calib_texts": len(batches) * calib_batch, "eval_texts": len(held), "max_len": max_len,
                  "loss": "MSE to float32 embeddings"},
    )
