"""Numeric formats: INT, minifloat (ExMy) and block-scaled (MX/NV), with one spelling registry."""

from mpsearch.formats.base import Encoded, Format
from mpsearch.formats.registry import list_formats, parse_format

__all__ = ["Encoded", "Format", "list_formats", "parse_format"]
