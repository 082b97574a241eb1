"""Activation statistics from forward hooks, checked against numpy/scipy on the same inputs."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import kurtosis
from torch import nn

from mpsearch.formats import parse_format
from sensitivity.activations import activation_statistics


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 8, generator=gen)
    x[:, :, 2] *= 10.0  # one outlier channel: large inter-channel range spread
    x[0, 0, 5] = 40.0  # a single outlier value
    return x


def test_statistics_match_numpy():
    model = nn.Sequential(nn.Linear(8, 4))
    batches = list(_data())
    fmts = [parse_format("int4"), parse_format("int8")]
    stats = activation_statistics(model, {"0": model[0]}, batches, lambda m, b: m(b), fmts, sample=100000,
                                  percentiles=(1.0, 50.0, 99.0), outlier_sigma=3.0)["0"]
    x = torch.cat(batches).double()
    a = x.numpy().reshape(-1)
    assert stats["count"] == a.size
    assert np.isclose(stats["min"], a.min()) and np.isclose(stats["max"], a.max()) and stats["absmax"] == 40.0
    assert np.isclose(stats["mean"], a.mean()) and np.isclose(stats["std"], a.std())
    assert np.isclose(stats["kurtosis"], kurtosis(a, fisher=False), rtol=1e-6)
    assert np.isclose(stats["outlier_ratio"], np.mean(np.abs(a - a.mean()) > 3.0 * a.std()))
    for p in (1.0, 50.0, 99.0):  # sample >= count: the subsample is every value, percentiles are exact
        assert np.isclose(stats["percentiles"][f"p{p:g}"], np.percentile(a, p))
    ch = a.reshape(-1, 8)
    camax = np.abs(ch).max(0)
    assert stats["channels"] == 8
    assert np.isclose(stats["channel_range_max_over_median"], camax.max() / np.median(camax), rtol=1e-5)
    assert np.isclose(stats["channel_inter_var"], ch.mean(0).var(ddof=1), rtol=1e-5)
    assert np.isclose(stats["channel_intra_var"], ch.var(0).mean(), rtol=1e-5)
    for f in fmts:
        q = f.fake_quant(x.float(), channel_axis=None, amax=40.0).double()
        assert np.isclose(stats["act_mse"][f.spelling], float(((q - x) ** 2).mean()), rtol=1e-6)
    assert stats["act_mse"]["int4"] > stats["act_mse"]["int8"] > 0


def test_given_amax_is_used_and_conv_channels_on_dim1():
    conv = nn.Conv2d(3, 2, 1)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    x[:, 1] += 5.0
    stats = activation_statistics(conv, {"c": conv}, [x], lambda m, b: m(b), [parse_format("int8")],
                                  act_amax={"c": 2.0}, sample=1000)["c"]
    assert stats["amax_used"] == 2.0 and stats["channels"] == 3
    assert np.isclose(stats["channel_inter_var"], x.double().mean((0, 2, 3)).var().item(), rtol=1e-6)
    q = parse_format("int8").fake_quant(x, channel_axis=None, amax=2.0)
    assert np.isclose(stats["act_mse"]["int8"], float(((q - x).double() ** 2).mean()), rtol=1e-6)


def test_subsampled_percentiles_are_close():
    model = nn.Sequential(nn.Linear(8, 4))
    x = torch.randn(20, 1000, 8, generator=torch.Generator().manual_seed(2))
    stats = activation_statistics(model, {"0": model[0]}, list(x), lambda m, b: m(b), [], sample=20000,
                                  percentiles=(50.0, 99.0))["0"]
    a = x.numpy().reshape(-1)
    assert abs(stats["percentiles"]["p50"] - np.percentile(a, 50)) < 0.05
    assert abs(stats["percentiles"]["p99"] - np.percentile(a, 99)) < 0.1
