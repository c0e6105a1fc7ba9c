"""Sampling rules against transformers' logits processors; stopping, streaming, seeds."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import lmzoo
from lmzoo.runtime.sampling import SamplingParams, apply_repetition_penalty, filter_logits


@pytest.mark.parametrize("t,k,p", [(0.7, None, None), (1.0, 5, None), (1.3, None, 0.8), (0.9, 20, 0.5), (1.0, None, 0.05)])
def test_filters_match_hf(t, k, p):
    torch.manual_seed(0)
    logits = torch.randn(3, 100) * 3
    ids = torch.zeros((3, 1), dtype=torch.long)
    ref = TemperatureLogitsWarper(t)(ids, logits.clone())
    if k:
        ref = TopKLogitsWarper(k)(ids, ref)
    if p:
        ref = TopPLogitsWarper(p)(ids, ref)
    ours = filter_logits(logits.clone(), SamplingParams(temperature=t, top_k=k, top_p=p))
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.allclose(ours.softmax(-1), ref.softmax(-1), atol=1e-6)


def test_repetition_penalty_matches_hf():
    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    seen = torch.randint(0, 50, (2, 12))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits.clone(), seen, 1.3), ref)


@pytest.fixture(scope="module")
def model():
    cfg = lmzoo.ModelConfig(vocab_size=32, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=48,
                            max_seq_len=64)
    torch.manual_seed(0)
    m = lmzoo.Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4)
    return m


def test_seed_reproducible_and_sampling_varies(model):
    ids = torch.tensor([[1, 2, 3]])
    a = lmzoo.generate(model, ids, max_new_tokens=20, temperature=1.0, seed=7, eos_token_id=[])
    b = lmzoo.generate(model, ids, max_new_tokens=20, temperature=1.0, seed=7, eos_token_id=[])
    c = lmzoo.generate(model, ids, max_new_tokens=20, temperature=1.0, seed=8, eos_token_id=[])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    ids = torch.tensor([[5, 9]])
    greedy = lmzoo.generate(model, ids, max_new_tokens=15, eos_token_id=[])
    assert torch.equal(lmzoo.generate(model, ids, max_new_tokens=15, temperature=1.0, top_k=1, seed=0, eos_token_id=[]), greedy)
    top_p = lmzoo.generate(model, ids, max_new_tokens=15, temperature=1.0, top_p=1e-6, seed=0, eos_token_id=[])
    assert torch.equal(top_p, greedy)


def test_eos_stops_a_row_and_pads_it(model):
    ids = torch.tensor([[1, 2, 3], [7, 8, 9]])
    free = lmzoo.generate(model, ids, max_new_tokens=12, eos_token_id=[])
    # an id that row 0 produces and row 1 never does
    eos = next(int(t) for t in free[0] if int(t) not in free[1].tolist())
    out = lmzoo.generate(model, ids, max_new_tokens=12, eos_token_id=eos, pad_token_id=31)
    first = free[0].tolist().index(eos)
    assert out[0, : first + 1].tolist() == free[0, : first + 1].tolist()
    assert (out[0, first + 1:] == 31).all()
    assert torch.equal(out[1], free[1])  # the other row runs to the end


def test_all_rows_stopped_ends_early(model):
    ids = torch.tensor([[1, 2, 3]])
    free = lmzoo.generate(model, ids, max_new_tokens=12, eos_token_id=[])
    out = lmzoo.generate(model, ids, max_new_tokens=12, eos_token_id=int(free[0, 2]))
    assert out.shape[1] <= 3


def test_stop_strings(model):
    from lmzoo.tokenizer import StreamDecoder

    class Tok:  # each id decodes to "<id>", so a stop string cannot match by accident
        eos_token_ids: list[int] = []

        def decode(self, ids, skip_special_tokens=True):
            return "".join(f"<{i}>" for i in ids)

        def stream_decoder(self):
            return StreamDecoder(self)

    ids = torch.tensor([[1, 2, 3]])
    free = lmzoo.generate(model, ids, max_new_tokens=12, eos_token_id=[])
    target = f"<{int(free[0, 3])}><{int(free[0, 4])}>"  # a stop string spanning two tokens
    out = lmzoo.generate(model, ids, max_new_tokens=12, eos_token_id=[], stop=[target], tokenizer=Tok())
    assert Tok().decode(out[0].tolist()).endswith(target)
    assert target in Tok().decode(out[0].tolist()) and target not in Tok().decode(out[0, :-1].tolist())


def test_stream_equals_generate(model):
    ids = torch.tensor([[4, 4, 2]])
    steps = list(lmzoo.stream_generate(model, ids, max_new_tokens=10, temperature=0.8, seed=3, eos_token_id=[]))
    whole = lmzoo.generate(model, ids, max_new_tokens=10, temperature=0.8, seed=3, eos_token_id=[])
    assert torch.equal(torch.stack(steps, 1), whole)
