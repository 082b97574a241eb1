"""The MiniLM retrieval evaluator on a tiny random BERT (no checkpoint): length-bucketed batches change only the work."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mpsearch.tasks.minilm import RetrievalEvaluator, embed  # noqa: E402


def right_padded(lengths: list[int], width: int, vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, vocab, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}  # pad id 0 after each text, as BERT's tokenizer does


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def test_bucketed_embeddings_match_one_padded_batch_and_keep_input_order(tiny_bert):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    q = right_padded([3, 17, 5, 9, 2, 30, 11], 30, 60, gen)
    d = right_padded([25, 30, 8, 12, 30, 4, 19], 30, 60, gen)
    ev = RetrievalEvaluator(q, d, batch=3)  # batches of 3 over 7 texts: a short last batch too
    got = ev.embeddings(tiny_bert)
    with torch.no_grad():
        want = torch.cat([embed(tiny_bert, q), embed(tiny_bert, d)])
    assert got.shape == (14, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(ev.ranks(tiny_bert, got), ev.ranks(tiny_bert, want))
