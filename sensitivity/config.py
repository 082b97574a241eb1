"""Settings of a sensitivity run (one dataclass, hashed into the cache key)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mpsearch.errors import MpsearchError

METHODS = ("hutchinson", "ggn", "fisher")
WEIGHT_TERMS = ("trace", "noise", "diag")


@dataclass
class SensitivityConfig:
    """How per-layer curvature and activation statistics are estimated.

    ``method``: "hutchinson" (Hessian trace by Rademacher probes and double backward), "ggn" (the
    Gauss-Newton part of the Hessian, PSD, by sampling labels from the model: one ordinary backward per
    sample serves every layer, with far less variance than Hutchinson on indefinite Hessians; needs the
    task's ``logits``; see sensitivity/ggn.py) or "fisher" (empirical squared-gradient diagonal, one
    backward per micro-batch: for models where double backward is impossible or too costly). ``tol`` is the per-layer relative standard error at which sampling stops
    (after ``min_samples``; at most ``max_samples``). ``joint=True`` serves every layer from one double
    backward per sample (independent probes per layer, so the estimate stays block-diagonal and unbiased;
    cross-layer terms only add variance); ``joint=False`` runs one HVP per layer (one layer at a time).
    ``act_hessian`` estimates d^T H_x d for the actual activation-quantization noise d of every candidate
    activation format (the activation term of Omega): exactly, one HVP per (layer, format, batch), over
    every calibration batch once; ``noise_joint=True`` shares one HVP per sample among them instead
    (random signs, unbiased, noisier, stops by ``tol``). ``act_trace`` also reports Tr(H_x) per input.
    ``weight_term``: "trace" = HAWQ-V2/V3's Tr(H)/n * ||Q(W) - W||^2; "noise" = the exact d^T H_W d of each
    weight format's actual error (one HVP per layer, format and batch; better for minifloat formats);
    "diag" = sum_i H_ii d_i^2, the expected d^T H d when rounding errors are independent across elements:
    it keeps where the error falls (minifloat error grows with |w|; outlier channels carry the curvature)
    but, unlike "noise", is read off the trace probes themselves (u * d^2 against Hu, or (g * d)^2 for
    Gauss-Newton and Fisher), so it costs nothing extra and converges like the traces. ``micro_batch`` splits calibration batches to bound memory
    (exact for losses that are means over rows). ``eigenvalues`` runs per-layer power iteration
    (HAWQ-V1's top eigenvalue; one backward per layer and iteration, so off by default).
    ``time_budget_s`` bounds the sampling time of a run; layers still short of ``tol`` then stop with
    ``trace_stop="time"`` and their (wider) CI is reported as is.
    ``probes_per_batch`` Hutchinson (or GGN) probes share one forward and one first backward (the graph is kept
    and each probe costs only its double backward; probes stay independent, so estimates are unchanged
    in law; 1 = the original one probe per batch). ``atol`` (default off) is an absolute stopping rule
    for traces near 0 or negative, whose relative error cannot reach ``tol``: a trace also stops
    (``trace_stop="atol"``) once its standard error is <= ``atol`` x the largest |trace| among the layers.
    ``ggn_probe`` (method=ggn): the logit-space probe, "rademacher" (default: symmetric factor of the
    softmax Hessian times Rademacher signs; no heavy tail on confident models, 64 probes instead of 140-152
    for every MiniLM layer at 10% RSE) or "labels" (labels sampled from the model, the first estimator);
    see sensitivity/ggn.py.
    """

    method: str = "hutchinson"
    tol: float = 0.1
    min_samples: int = 10
    max_samples: int = 200
    joint: bool = False
    act_hessian: bool = True
    act_trace: bool = False
    noise_joint: bool = False
    weight_term: str = "trace"
    micro_batch: int | None = None
    device: str = "cpu"
    seed: int = 0
    eigenvalues: bool = False
    power_iters: int = 50
    power_tol: float = 1e-4
    eigen_batches: int = 1
    act_sample: int = 65536
    percentiles: tuple[float, ...] = (0.1, 1.0, 50.0, 99.0, 99.9)
    outlier_sigma: float = 6.0
    checkpoint_s: float = 5.0
    time_budget_s: float | None = None
    probes_per_batch: int = 1
    atol: float | None = None
    ggn_probe: str = "rademacher"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "SensitivityConfig":
        if self.method not in METHODS:
            raise MpsearchError(f"unknown sensitivity method {self.method!r}", hint=f"use one of {', '.join(METHODS)}")
        if not (0 < self.tol < 10):
            raise MpsearchError(f"sensitivity tol must be in (0, 10), got {self.tol}")
        if self.min_samples < 2 or self.max_samples < self.min_samples:
            raise MpsearchError(f"need 2 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}")
        if self.weight_term not in WEIGHT_TERMS:
            raise MpsearchError(f"weight_term must be 'trace' (HAWQ), 'noise' (exact d^T H d) or 'diag' "
                                f"(sum_i H_ii d_i^2), got {self.weight_term!r}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise MpsearchError(f"micro_batch must be >= 1, got {self.micro_batch}")
        if self.probes_per_batch < 1:
            raise MpsearchError(f"probes_per_batch must be >= 1, got {self.probes_per_batch}")
        if self.atol is not None and not (0 < self.atol < 1):
            raise MpsearchError(f"sensitivity atol must be in (0, 1) (a fraction of the largest trace), got {self.atol}")
        if self.ggn_probe not in ("rademacher", "labels"):
            raise MpsearchError(f"ggn_probe must be 'rademacher' or 'labels', got {self.ggn_probe!r}")
        if self.power_iters < 1 or self.eigen_batches < 1 or self.act_sample < 100:
            raise MpsearchError("power_iters and eigen_batches must be >= 1 and act_sample >= 100")
        if not all(0 <= p <= 100 for p in self.percentiles):
            raise MpsearchError(f"percentiles must lie in [0, 100], got {self.percentiles}")
        return self

    def cache_dict(self) -> dict[str, Any]:
        """The settings that change results (device and checkpoint cadence do not)."""
        d = asdict(self)
        d.pop("device")
        d.pop("checkpoint_s")
        d["percentiles"] = list(self.percentiles)
        # newer settings: keep old cache keys where the old behaviour is selected
        for k, default in (("probes_per_batch", 1), ("atol", None)):
            if d[k] == default:
                d.pop(k)
        if self.method != "ggn" or self.ggn_probe == "labels":
            d.pop("ggn_probe")  # the original estimator: old cache keys stay valid
        return d
