"""Unquantized reference formats (fp32 / fp16 / bf16): the "keep this layer in float" choice."""

from __future__ import annotations

import numpy as np
import torch

from mpsearch.formats.base import Encoded, Format

_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class FloatFormat(Format):
    family = "float"

    def __init__(self, spelling: str) -> None:
        self.spelling = spelling
        self.dtype = _TORCH[spelling]
        self.element_bits = torch.finfo(self.dtype).bits

    def fake_quant(self, x, *, channel_axis=0, amax=None):
        return x if self.dtype == torch.float32 else x.to(self.dtype).to(x.dtype)

    def effective_bits(self, shape, *, channel_axis=0):
        return float(self.element_bits)

    def encode(self, x, *, channel_axis=0, amax=None):
        y = x.detach().to(self.dtype).contiguous()
        raw = y.view(torch.int16 if self.element_bits == 16 else torch.int32).cpu().numpy()
        return Encoded(self.spelling, tuple(x.shape), raw.view(np.uint8).reshape(-1))

    def decode(self, enc):
        width = {16: np.int16, 32: np.int32}[self.element_bits]
        raw = torch.from_numpy(enc.codes.view(width).copy()).reshape(enc.shape)
        return raw.view(self.dtype).to(torch.float32)
