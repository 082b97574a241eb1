"""Numeric formats: INT, minifloat (ExMy) and block-scaled (MX/NV), with one spelling registry."""

from mpsearch.formats.base import Encoded, Format
from mpsearch.formats.block import BlockFormat, e8m0_decode, e8m0_encode
from mpsearch.formats.dyadic import dyadic, requantize
from mpsearch.formats.integer import IntFormat
from mpsearch.formats.minifloat import MiniFloat, MiniFloatFormat
from mpsearch.formats.packing import pack_codes, unpack_codes
from mpsearch.formats.registry import list_formats, parse_format
from mpsearch.formats.scaling import ScaleMethod

__all__ = [
    "BlockFormat",
    "Encoded",
    "Format",
    "IntFormat",
    "MiniFloat",
    "MiniFloatFormat",
    "ScaleMethod",
    "dyadic",
    "e8m0_decode",
    "e8m0_encode",
    "list_formats",
    "pack_codes",
    "parse_format",
    "requantize",
    "unpack_codes",
]
