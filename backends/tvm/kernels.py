"""TE definitions of the quantized Conv/Linear kernels (act quantization + weight decode + dot product).

One PrimFunc per planned layer; its blocks are named ``mps_*`` and the reduction block ``mps_acc`` is
annotated with the layer kind, so a scheduler can find them by name. The weight decode (bit arithmetic for INT, a code book for minifloats,
never TVM's fp8 casts) is written as its own stage so that a schedule inlines it into the reduction:
weights travel packed and are decoded in registers. Kernel parameters are ``(x, *weight arrays, y)``
in the order ``KernelSpec.param_names``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm import te, tirx

from backends.tvm.weights import ActQuant, PreparedWeight

F32 = "float32"


@dataclass
class KernelSpec:
    """Shape/attribute description of one layer kernel (hashable key for caches via ``key()``)."""

    kind: str  # "linear" | "conv2d"
    x_shape: tuple[int, ...]  # linear: (M, K); conv2d: (B, C, H, W)
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    param_names: list[str] = field(default_factory=list)
    out_lead: tuple[int, ...] | None = None  # linear: leading output dims (default ``(M,)``)
    pack_cols: int | None = None  # linear: ``w`` / ``codes`` are ``pack_fp32_weight(arr, pack_cols)``

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (*(self.out_lead or (self.x_shape[0],)), self.out_channels)
        b, _, h, w = self.x_shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return (b, self.out_channels, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def key(self) -> str:
        base = f"{self.kind}|{self.x_shape}|{self.out_channels}|{self.kernel}|{self.stride}|{self.padding}|{self.dilation}|{self.groups}"
        base = base if self.out_lead is None else f"{base}|{self.out_lead}"
        return base if not self.pack_cols else f"{base}|pack{self.pack_cols}"


def _i64(shape) -> tuple:
    """Shapes of the kernel's parameters as int64, like the PrimFuncs Relax legalizes (FuseTIR merges a
    kernel with its consumers only when the buffers it shares with them have the same index type)."""
    return tuple(tirx.IntImm("int64", int(d)) for d in shape)


def pack_fp32_weight(w: np.ndarray, cols: int) -> np.ndarray:
    """``[K, O]`` -> ``[O / cols, K, cols]``: each output tile's weights contiguous (see ``linear_kernel``).
    Any dtype (fp32/fp16/bf16 weights, one-code-per-byte int codes)."""
    k, o = w.shape
    return np.ascontiguousarray(w.reshape(k, o // cols, cols).transpose(1, 0, 2))


def packable(pw: PreparedWeight) -> bool:
    """Weights whose ``[K, O]`` array can be laid out tile-major: float weights and one code per byte."""
    return pw.mode in ("float32", "float16", "bfloat16", "int8dot") or (pw.mode in ("int", "lut") and pw.per_byte == 1)


def cheap_decode(pw: PreparedWeight) -> bool:
    """A decode of one load + convert (+ a per-channel zero point): the CPU schedule reads such weights
    in place inside the FMA loop instead of decoding a slice into a local buffer first."""
    return pw.mode in ("float32", "float16", "bfloat16", "int8dot") or (
        pw.mode == "int" and pw.per_byte == 1 and pw.group is None)


_PACKED = ("w", "codes")


def kernel_arrays(pw: PreparedWeight, spec: "KernelSpec") -> list[np.ndarray]:
    """The weight arrays a kernel takes, in ``spec.param_names`` order and in its layout."""
    return [pack_fp32_weight(pw.arrays[n], spec.pack_cols) if n in _PACKED and spec.pack_cols else pw.arrays[n]
            for n in spec.param_names]


def _weight_decoder(pw: PreparedWeight, pack_cols: int | None = None):
    """Placeholders for the weight arrays and ``w(k, o) -> (value, scale_after_dot)``."""
    k, o = pw.k, pw.out_channels
    names, tensors = [], []
    c = pack_cols if pack_cols and packable(pw) else None

    class _Packed:  # w[kk, oo] on a tile-major [O / c, K, c] array
        def __init__(self, t):
            self.t = t

        def __getitem__(self, idx):
            kk, oo = idx
            return self.t[oo // c, kk, oo % c]

    def ph(name: str, shape, dtype):
        if c and name in _PACKED:
            t = te.placeholder(_i64((shape[1] // c, shape[0], c)), dtype=dtype, name=name)
            names.append(name)
            tensors.append(t)
            return _Packed(t)
        t = te.placeholder(_i64(shape), dtype=dtype, name=name)
        names.append(name)
        tensors.append(t)
        return t

    if pw.mode in ("float32", "float16"):
        w = ph("w", (k, o), pw.mode)
        return names, tensors, (lambda kk, oo: w[kk, oo].astype(F32)), None
    if pw.mode == "bfloat16":
        w = ph("w", (k, o), "uint16")
        return names, tensors, (lambda kk, oo: tirx.reinterpret(F32, w[kk, oo].astype("uint32") << 16)), None
    if pw.mode == "int8dot":
        w = ph("w", (k, o), "int8")
        s = ph("scale", (o,), F32)
        return names, tensors, (lambda kk, oo: w[kk, oo]), s
    width = (o + pw.per_byte - 1) // pw.per_byte
    codes = ph("codes", (k, width), "uint8")
    scale = ph("scale", (pw.n_groups, o), F32)
    zp = ph("zp", (pw.n_groups, o), F32) if pw.has_zp else None
    lut = ph("lut", (1 << pw.bits,), F32) if pw.mode == "lut" else None
    mask = (1 << pw.bits) - 1

    def code(kk, oo):
        if pw.per_byte == 1:
            return codes[kk, oo]
        byte = codes[kk, oo // pw.per_byte]
        return (byte >> ((oo % pw.per_byte) * pw.bits).astype("uint8")) & tirx.const(mask, "uint8")

    def value(kk, oo):
        c = code(kk, oo)
        if lut is not None:
            return lut[c.astype("int32")]
        ci = c.astype("int32")
        if pw.coding == "twos":  # sign-extend a bits-wide two's complement code
            half = tirx.const(1 << (pw.bits - 1), "int32")
            return ((ci ^ half) - half).astype(F32)
        return (ci + tirx.const(pw.offset, "int32")).astype(F32)

    if pw.group is None:  # one scale per output channel: apply it after the dot product
        def dec(kk, oo):
            v = value(kk, oo)
            return v - zp[0, oo] if zp is not None else v
        return names, tensors, dec, scale

    def dec_g(kk, oo):
        g = kk // pw.group
        v = value(kk, oo)
        if zp is not None:
            v = v - zp[g, oo]
        return v * scale[g, oo]

    return names, tensors, dec_g, None


def int8_exact_in_fp32(pw: PreparedWeight, aq: ActQuant | None) -> bool:
    """True if this int8 x int8 layer's dot products are exact in fp32 arithmetic.

    Every product of two int8 codes is an integer of at most 2^14 and every partial sum is bounded by
    ``max_o sum_k |w[k, o]| * max|act code|``; below 2^24 all of them are exactly representable in
    fp32, so fp32 FMAs give the int32 result bit for bit in any summation order. AVX2 has no int8 dot
    instruction (no VNNI) and multiplies int32 at a quarter of the fp32 FMA rate, so the kernel then
    runs the int8 layer on fp32 FMAs over integer-valued operands (weights stored as int8).
    """
    if pw.mode != "int8dot" or aq is None:
        return False
    wsum = int(np.abs(pw.arrays["w"].astype(np.int64)).sum(axis=0).max(initial=0))
    return wsum * max(abs(int(aq.qmin)), abs(int(aq.qmax))) < (1 << 24)


def _quant_act(x: te.Tensor, aq: ActQuant | None, integer: bool | str) -> te.Tensor:
    """Per-tensor static quantization of the layer input: float fake-quant (``False``), int8 codes
    (``True``) or the codes as integer-valued fp32 (``"codes"``, for exact fp32 integer dots)."""
    if aq is None:
        return x
    s = tirx.const(float(aq.scale), F32)
    zp = tirx.const(float(aq.zero_point), F32)
    lo, hi = tirx.const(float(aq.qmin), F32), tirx.const(float(aq.qmax), F32)

    def q(*idx):
        return tirx.max(tirx.min(tirx.round(x(*idx) / s) + zp, hi), lo)

    if integer == "codes":
        return te.compute(x.shape, lambda *i: q(*i), name="mps_act_q")
    if integer:
        return te.compute(x.shape, lambda *i: q(*i).astype("int8"), name="mps_act_q")
    return te.compute(x.shape, lambda *i: (q(*i) - zp) * s, name="mps_act_q")


ROW_TILES = (4,)  # register tile rows of the AVX2 schedule (4 x 16 fp32 accumulators; 6 x 16 spilled)
ROW_TILES_AVX512 = (6, 4)  # AVX-512: 6 x 64 accumulators in 24 of the 32 zmm registers


def padded_rows(m: int, tiles: tuple[int, ...] | None = None) -> int:
    """Rows the linear kernel computes: ``m`` rounded up to a register tile (no ragged tail), choosing
    the tile that pads least (``tiles``: the schedule's row tiles, default ``ROW_TILES``)."""
    tiles = tuple(tiles or ROW_TILES)
    if m <= max(tiles) or any(m % t == 0 for t in tiles):
        return m
    return min((-(-m // t) * t for t in tiles))


def linear_kernel(m: int, pw: PreparedWeight, aq: ActQuant | None, out_lead: tuple[int, ...] | None = None,
                  row_tiles: tuple[int, ...] | None = None, pack_cols: int | None = None):
    """``y[m, o] = sum_k act(x)[m, k] * w(k, o)`` as a PrimFunc; returns (func, spec).

    Rows are padded internally to a multiple of the register tile (zeros quantize to zero), so odd
    token counts keep the full register tile (``row_tiles``: the CPU schedule's, see
    ``schedule_cpu.linear_row_tiles``; default ``ROW_TILES``). With ``out_lead`` (leading dims whose product is ``m``, e.g.
    ``(batch, tokens)``) the output is ``[*out_lead, o]``: the layer's own output shape, so element-wise
    consumers (bias, GELU, residual) see the same shape and Relax can fuse them into the kernel.
    ``pack_cols`` (``packable`` weights): the weight array is ``pack_fp32_weight(w, pack_cols)``, so the
    schedule's output tile of ``pack_cols`` channels streams one contiguous block (row pieces of the
    ``[K, O]`` layout sit a page apart, which the hardware prefetcher does not follow: MiniLM's weights
    do not stay cached between forward passes).
    """
    k, o = pw.k, pw.out_channels
    if pack_cols and (not packable(pw) or o % pack_cols):
        pack_cols = None
    mp = padded_rows(m, row_tiles)
    integer = pw.mode == "int8dot"
    x = te.placeholder(_i64((m, k)), dtype=F32, name="x")
    names, tensors, dec, post_scale = _weight_decoder(pw, pack_cols)
    if mp != m:
        x_in = te.compute((mp, k), lambda i, kk: tirx.if_then_else(i < m, x[tirx.min(i, m - 1), kk], tirx.const(0.0, F32)), name="mps_xpad")
    else:
        x_in = x
    f32dot = int8_exact_in_fp32(pw, aq)
    xa = _quant_act(x_in, aq, "codes" if f32dot else integer)
    r = te.reduce_axis((0, k), name="k")
    info = {"mps_kind": "linear", "mps_rows": m, "mps_groups": 1, "mps_cheap_decode": int(cheap_decode(pw))}
    if f32dot:  # int8 x int8 on exact fp32 FMAs (see int8_exact_in_fp32); same result as the int32 dot
        wdec = te.compute((k, o), lambda kk, oo: dec(kk, oo).astype(F32), name="mps_decode")
        acc = te.compute((mp, o), lambda i, j: te.sum(xa[i, r] * wdec[r, j], axis=r), name="mps_acc", attrs=info)
        comb = tirx.const(float(aq.scale), F32)
        y = te.compute(_i64((m, o)), lambda i, j: acc[i, j] * (post_scale[j] * comb), name="mps_y")
    elif integer:
        acc = te.compute((mp, o), lambda i, j: te.sum(xa[i, r].astype("int32") * dec(r, j).astype("int32"), axis=r), name="mps_acc", attrs=info)
        comb = tirx.const(float(aq.scale), F32)
        y = te.compute(_i64((m, o)), lambda i, j: acc[i, j].astype(F32) * (post_scale[j] * comb), name="mps_y")
    else:
        wdec = te.compute((k, o), lambda kk, oo: dec(kk, oo), name="mps_decode")
        acc = te.compute((mp, o), lambda i, j: te.sum(xa[i, r] * wdec[r, j], axis=r), name="mps_acc", attrs=info)
        if post_scale is not None:
            y = te.compute(_i64((m, o)), lambda i, j: acc[i, j] * post_scale[0, j], name="mps_y")
        else:
            y = te.compute(_i64((m, o)), lambda i, j: acc[i, j], name="mps_y")
    if out_lead is not None and tuple(out_lead) != (m,):
        lead = tuple(int(d) for d in out_lead)
        if int(np.prod(lead)) != m:
            raise ValueError(f"output leading dims {lead} do not hold {m} rows")
        y2 = y

        def row(*idx):
            r = idx[0]
            for d, i in zip(lead[1:], idx[1:]):
                r = r * d + i
            return r

        # the row-major view as its own stage (a schedule inlines it): the kernel writes [*lead, o]
        y = te.compute(_i64((*lead, o)), lambda *idx: y2[row(*idx[:-1]), idx[-1]], name="mps_view")
    func = te.create_prim_func([x, *tensors, y])
    spec = KernelSpec("linear", (m, k), o, param_names=names, out_lead=None if out_lead is None else tuple(int(d) for d in out_lead),
                      pack_cols=pack_cols)
    return func, spec


def conv2d_kernel(x_shape, kernel, stride, padding, dilation, groups: int, pw: PreparedWeight, aq: ActQuant | None,
                  index64: bool = True):
    """Grouped NCHW conv2d with quantized input and decoded ``[C/g*R*S, O]`` weight; returns (func, spec).

    ``index64``: int64 parameter shapes, which the CPU path needs to fuse the kernel with its Relax-legalized
    consumers. CUDA kernels are scheduled alone by dlight, whose conv schedules fail to lower (int64 vs int32
    loop variables) with them: the CUDA path passes False."""
    shape = _i64 if index64 else (lambda dims: tuple(int(d) for d in dims))
    b, c, h, w_ = (int(v) for v in x_shape)
    o = pw.out_channels
    (kh, kw), (sh, sw), (ph_, pw_), (dh, dw) = kernel, stride, padding, dilation
    cg, og = c // groups, o // groups
    spec = KernelSpec("conv2d", (b, c, h, w_), o, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), groups)
    _, _, oh, ow = spec.out_shape
    integer = pw.mode == "int8dot"
    x = te.placeholder(shape((b, c, h, w_)), dtype=F32, name="x")
    names, tensors, dec, post_scale = _weight_decoder(pw)
    spec.param_names = names
    f32dot = int8_exact_in_fp32(pw, aq)
    xa = _quant_act(x, aq, "codes" if f32dot else integer)
    zero = tirx.const(0, xa.dtype)
    if ph_ or pw_:
        xp = te.compute(
            (b, c, h + 2 * ph_, w_ + 2 * pw_),
            lambda n, ci, y_, x_: tirx.if_then_else(
                tirx.all(y_ >= ph_, y_ < h + ph_, x_ >= pw_, x_ < w_ + pw_), xa[n, ci, y_ - ph_, x_ - pw_], zero),
            name="mps_pad",
        )
    else:
        xp = xa
    rc = te.reduce_axis((0, cg), name="rc")
    rr = te.reduce_axis((0, kh), name="rr")
    rs = te.reduce_axis((0, kw), name="rs")

    def inp(n, oc, yy, xx):
        return xp[n, (oc // og) * cg + rc, yy * sh + rr * dh, xx * sw + rs * dw]

    kidx = lambda: rc * (kh * kw) + rr * kw + rs  # noqa: E731
    info = {"mps_kind": "conv2d", "mps_rows": b * oh * ow, "mps_groups": groups}
    if f32dot:  # int8 x int8 on exact fp32 FMAs (see int8_exact_in_fp32); same result as the int32 dot
        wdec = te.compute((cg * kh * kw, o), lambda kk, oo: dec(kk, oo).astype(F32), name="mps_decode")
        acc = te.compute((b, o, oh, ow), lambda n, oc, yy, xx: te.sum(
            inp(n, oc, yy, xx) * wdec[kidx(), oc], axis=[rc, rr, rs]), name="mps_acc", attrs=info)
        comb = tirx.const(float(aq.scale), F32)
        y = te.compute(shape((b, o, oh, ow)), lambda n, oc, yy, xx: acc[n, oc, yy, xx] * (post_scale[oc] * comb), name="mps_y")
    elif integer:
        acc = te.compute((b, o, oh, ow), lambda n, oc, yy, xx: te.sum(
            inp(n, oc, yy, xx).astype("int32") * dec(kidx(), oc).astype("int32"), axis=[rc, rr, rs]), name="mps_acc", attrs=info)
        comb = tirx.const(float(aq.scale), F32)
        y = te.compute(shape((b, o, oh, ow)), lambda n, oc, yy, xx: acc[n, oc, yy, xx].astype(F32) * (post_scale[oc] * comb), name="mps_y")
    else:
        wdec = te.compute((cg * kh * kw, o), lambda kk, oo: dec(kk, oo), name="mps_decode")
        acc = te.compute((b, o, oh, ow), lambda n, oc, yy, xx: te.sum(
            inp(n, oc, yy, xx) * wdec[kidx(), oc], axis=[rc, rr, rs]), name="mps_acc", attrs=info)
        if post_scale is not None:
            y = te.compute(shape((b, o, oh, ow)), lambda n, oc, yy, xx: acc[n, oc, yy, xx] * post_scale[0, oc], name="mps_y")
        else:
            y = te.compute(shape((b, o, oh, ow)), lambda n, oc, yy, xx: acc[n, oc, yy, xx], name="mps_y")
    func = te.create_prim_func([x, *tensors, y])
    return func, spec
