"""The interface every numeric format implements.

A ``Format`` is the vocabulary shared by the whole tool: sensitivity uses ``fake_quant`` to measure
quantization error, the cost model uses ``effective_bits`` and ``element_bits``, the TVM backend consumes
``encode`` (codes + scales, exactly what the simulation used), and plans/CLI/reports use ``spelling``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from mpsearch.formats.dyadic import dyadic as _dyadic
from mpsearch.formats.packing import pack_codes, unpack_codes


@dataclass
class Encoded:
    """A tensor in a format's storage form.

    ``codes`` holds one unsigned integer code per element (uint8 numpy array, original shape);
    ``scales``/``zero_points`` hold the per-tensor / per-channel / per-group / per-block parameters
    (float32 numpy arrays, or raw uint8 codes for E8M0/E4M3 block scales, see ``scale_codes``).
    ``packed`` is the dense byte stream of ``codes`` (sub-byte codes packed LSB first, two int4/fp4 codes
    per byte with the low nibble first, row by row; exact layout in :mod:`mpsearch.formats.packing`).
    ``bits`` is the code width used for packing.
    """

    spelling: str
    shape: tuple[int, ...]
    codes: np.ndarray
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None
    scale_codes: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    bits: int = 8

    @property
    def packed(self) -> np.ndarray:
        """``codes`` packed into bytes: ``(rows, ceil(cols * bits / 8))`` uint8, rows = ``shape[0]``."""
        return pack_codes(self.codes, self.bits)

    @staticmethod
    def codes_from_packed(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
        """Inverse of :attr:`packed`: the uint8 code array of ``shape``."""
        return unpack_codes(packed, bits, shape)


class Format(ABC):
    """A numeric format for weights or activations.

    ``channel_axis`` in the methods below is the output-channel axis of a weight tensor (0 for
    Conv/Linear); activations are quantized per tensor with a calibrated ``amax``.
    """

    #: canonical compact spelling, e.g. ``int4g128``, ``e4m3``, ``mxfp4``, ``fp32``
    spelling: str
    #: "float" (no quantization), "int", "fp" (minifloat), "block" (MX/NV block-scaled)
    family: str
    #: bits of one stored element, excluding scales
    element_bits: int

    @property
    def is_float(self) -> bool:
        """True for the unquantized reference formats (fp32, fp16, bf16)."""
        return self.family == "float"

    @abstractmethod
    def fake_quant(
        self, x: torch.Tensor, *, channel_axis: int | None = 0, amax: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Quantize-dequantize ``x``; returns a tensor of the same dtype and shape.

        With ``amax`` given, use that static range (activations); otherwise derive scales from ``x``
        per the format's granularity (per-channel along ``channel_axis``, per-group, per-block).
        """

    @abstractmethod
    def effective_bits(self, shape: tuple[int, ...], *, channel_axis: int | None = 0) -> float:
        """Average stored bits per element *including* scale / zero-point overhead."""

    def storage_bytes(self, shape: tuple[int, ...], *, channel_axis: int | None = 0) -> float:
        """Bytes to store a tensor of ``shape`` (codes plus scales)."""
        n = int(np.prod(shape)) if shape else 1
        return n * self.effective_bits(shape, channel_axis=channel_axis) / 8.0

    @abstractmethod
    def encode(
        self, x: torch.Tensor, *, channel_axis: int | None = 0, amax: float | torch.Tensor | None = None
    ) -> Encoded:
        """Codes and scales of ``x``; ``decode(encode(x, ...))`` equals ``fake_quant(x, ...)`` exactly for the
        same ``channel_axis`` / ``amax``."""

    @abstractmethod
    def decode(self, enc: Encoded) -> torch.Tensor:
        """Float32 values represented by ``enc``."""

    #: integer multiplier + shift form of a requantization scale (HAWQ-V3), see :mod:`.dyadic`
    dyadic = staticmethod(_dyadic)

    def __repr__(self) -> str:
        return f"Format({self.spelling!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Format) and other.spelling == self.spelling

    def __hash__(self) -> int:
        return hash(self.spelling)
