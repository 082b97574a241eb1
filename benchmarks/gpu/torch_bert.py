"""A BERT encoder in plain PyTorch (no ``transformers``), parameter names as Hugging Face's ``BertModel``.

The torch baselines of the MiniLM GPU benchmark (run_minilm_on_device.py) run this module when the device
has no ``transformers``; build_minilm.py checks it against ``BertModel`` with MiniLM's real weights on this
machine (fp32, max abs diff recorded in build/gpu/minilm/meta.json). Attention is
``F.scaled_dot_product_attention`` (what ``BertModel`` uses by default) with the additive padding mask.
Returns ``last_hidden_state``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class _Self(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _DenseLN(nn.Module):
    def __init__(self, d_in: int, d: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)  # noqa: N815 (Hugging Face's name)


class _Attention(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.self = _Self(d)
        self.output = _DenseLN(d, d, eps)


class _Intermediate(nn.Module):
    def __init__(self, d: int, ff: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d, ff)


class _Layer(nn.Module):
    def __init__(self, d: int, ff: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention = _Attention(d, eps)
        self.intermediate = _Intermediate(d, ff)
        self.output = _DenseLN(ff, d, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        sa = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, d // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(sa.query(x)), split(sa.key(x)), split(sa.value(x)), attn_mask=bias)
        ctx = ctx.transpose(1, 2).reshape(b, s, d)
        ao = self.attention.output
        x = ao.LayerNorm(ao.dense(ctx) + x)
        h = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(h) + x)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, pos: int, types: int, d: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d)
        self.position_embeddings = nn.Embedding(pos, d)
        self.token_type_embeddings = nn.Embedding(types, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)  # noqa: N815


class _Encoder(nn.Module):
    def __init__(self, n: int, d: int, ff: int, heads: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(d, ff, heads, eps) for _ in range(n))


class TorchBert(nn.Module):
    """``forward(input_ids, attention_mask) -> last_hidden_state``, token type 0 everywhere."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("TorchBert implements absolute positions and erf GELU only")
        d, eps = int(cfg["hidden_size"]), float(cfg["layer_norm_eps"])
        self.embeddings = _Embeddings(int(cfg["vocab_size"]), int(cfg["max_position_embeddings"]), int(cfg["type_vocab_size"]), d, eps)
        self.encoder = _Encoder(int(cfg["num_hidden_layers"]), d, int(cfg["intermediate_size"]), int(cfg["num_attention_heads"]), eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        s = input_ids.shape[1]
        pos = torch.arange(s, device=input_ids.device)
        x = e.word_embeddings(input_ids) + e.position_embeddings(pos)[None] + e.token_type_embeddings.weight[0]
        x = e.LayerNorm(x)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x
