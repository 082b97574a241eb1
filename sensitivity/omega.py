"""HAWQ-V2/V3 perturbation Omega per (layer, candidate): weight noise and activation noise, same units.

Second-order model of the loss increase when layer l alone is quantized, with quantization noise d that is
zero-mean and spread evenly over the tensor's elements: E[d^T H d] ~= Tr(H)/n * ||d||^2. Applied to

- the weight:   Omega_w = Tr(H_W)/n_W * ||Q_w(W) - W||^2      (HAWQ-V2/V3; exact ||.||^2 of this format)
- the input x:  Omega_a = E_batches[d^T H_x d],  d = Q_a(x) - x at the static range (per calibration batch)

The activation term is not Tr(H_x)/n_x * ||d||^2: activation noise is far from isotropic (ReLU zeros and
values at the range limits carry none, outlier channels carry most), and on the digits CNN that isotropic
form ranked layers no better than chance. Instead the actual noise vector d of each activation format is
used as a Hutchinson-style probe with a random sign (unbiased in the joint multi-layer backward) and the
estimator returns d^T H_x d, the exact second-order loss change of quantizing that input, with a CI
like the traces. Tr(H_x) itself is still reported (``act_trace``) when ``act_trace=True``.
``weight_term="noise"`` (not the default) applies the same exact d^T H d estimator to the weights as well,
for formats whose error is far from isotropic (minifloats: relative error grows with magnitude);
``weight_term="diag"`` uses sum_i H_ii d_i^2 instead (the expectation of d^T H d over rounding errors
independent across elements: where the error falls is kept, the probe noise of one exact form is not).
Both terms are second-order loss changes of the same loss, so INT and minifloat formats (weights or
activations) compete on equal terms; like HAWQ we drop the constant 1/2. Negative estimates (saddle
directions, or noise around 0) are clamped to 0 in Omega and flagged in ``layer_stats``.
"""

from __future__ import annotations

from typing import Any

import torch

from mpsearch.formats import Format, parse_format
from mpsearch.plan import Candidate


@torch.no_grad()
def weight_error(weight: torch.Tensor, fmt: Format) -> float:
    """||Q(W) - W||^2 with per-output-channel scales (channel_axis=0), as the simulation quantizes."""
    w = weight.detach().float()
    return float((fmt.fake_quant(w, channel_axis=0) - w).double().pow(2).sum())


def omega_table(candidates: list[Candidate], traces: dict[str, float], weight_err: dict[str, dict[str, float]],
                act_energy: dict[str, dict[str, float]], n_params: dict[str, int],
                weight_energy: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """``omega[layer][cand.key]`` from weight traces, weight errors and input noise curvatures d^T H_x d;
    with ``weight_energy`` (d^T H_W d per weight format) the weight term uses it instead of the trace."""
    omega: dict[str, dict[str, float]] = {}
    for layer, trace in traces.items():
        h_w = max(trace, 0.0) / n_params[layer]
        row = {}
        for c in candidates:
            if weight_energy is not None and c.weight in weight_energy.get(layer, {}):
                w_term = max(weight_energy[layer][c.weight], 0.0)
            else:
                w_term = h_w * weight_err[layer][c.weight]
            a_term = 0.0 if parse_format(c.act).is_float else max(act_energy.get(layer, {}).get(c.act, 0.0), 0.0)
            row[c.key] = w_term + a_term
        omega[layer] = row
    return omega
