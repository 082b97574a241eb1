"""A sampled quantity never stops before every calibration batch has contributed a probe."""

from __future__ import annotations

from sensitivity.hessian import sample_until_stopped


def test_no_stop_before_every_batch_is_seen():
    seen: list[int] = []

    def one_round(batch_index, want, gens):
        seen.append(batch_index)
        return [{k: 1.0 + 1e-3 * (len(seen) % 2) for k in want} for _ in gens], {}

    import torch

    st = sample_until_stopped(one_round, 3, ["w|a"], device=torch.device("cpu"), tol=0.5, min_samples=2,
                              max_samples=100, seed=0, probes_per_batch=4)
    # RSE is tiny after 2 samples, but batches 1 and 2 must still be drawn: 3 rounds of 4 probes
    assert sorted(set(seen)) == [0, 1, 2]
    assert st["next_sample"] == 12 and st["done"]["w|a"] == "tol"
