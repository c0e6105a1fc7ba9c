"""Speculative decoding: output identical to the target's greedy output, whatever the draft."""

import copy

import pytest
import torch

import lmzoo
from lmzoo.errors import GenerationError
from lmzoo.quant.layers import quantize
from lmzoo.runtime.speculative import SpeculativeStats, speculative_generate


def _target(vocab=128):
    cfg = lmzoo.ModelConfig(vocab_size=vocab, n_layer=3, n_embd=64, n_head=4, n_kv_head=2,
                            intermediate_size=128, max_seq_len=256)
    torch.manual_seed(0)
    m = lmzoo.Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)  # sharper distributions: longer, less repetitive greedy runs
    return m


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("draft_kind", ["int4", "other"])
def test_identical_to_target_greedy(k, draft_kind):
    target = _target()
    if draft_kind == "int4":
        draft = quantize(copy.deepcopy(target), mode="int4")
    else:  # an unrelated model: almost everything is rejected, output must still be exact
        torch.manual_seed(1)
        draft = lmzoo.Transformer(target.config.replace(n_layer=1)).eval()
    for seed in range(3):
        ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(seed))
        ref = lmzoo.generate(target, ids, max_new_tokens=40, eos_token_id=[])
        out = speculative_generate(target, draft, ids, max_new_tokens=40, k=k, eos_token_id=[])
        assert torch.equal(out, ref)


def test_self_draft_accepts_everything():
    target = _target()
    st = SpeculativeStats()
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(0))
    speculative_generate(target, copy.deepcopy(target), ids, max_new_tokens=41, k=4, eos_token_id=[], stats=st)
    assert st.acceptance_rate == 1.0
    assert st.tokens_per_pass == pytest.approx(41 / 9)  # 1 from prefill + 8 passes of 5


def test_stops_at_eos_like_generate():
    target = _target()
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(2))
    ref = lmzoo.generate(target, ids, max_new_tokens=30, eos_token_id=[])
    eos = int(ref[0, 12])
    ref_eos = lmzoo.generate(target, ids, max_new_tokens=30, eos_token_id=eos)
    out = speculative_generate(target, copy.deepcopy(target), ids, max_new_tokens=30, k=5, eos_token_id=eos)
    assert torch.equal(out, ref_eos)
    assert int(out[0, -1]) == eos


def test_bad_input():
    target = _target()
    ids = torch.zeros((1, 4), dtype=torch.long)
    with pytest.raises(GenerationError, match="vocabulary"):
        speculative_generate(target, _target(vocab=100), ids)
    with pytest.raises(GenerationError, match="one sequence"):
        speculative_generate(target, target, torch.zeros((2, 4), dtype=torch.long))
    with pytest.raises(GenerationError, match="positive integer"):
        speculative_generate(target, target, ids, k=0)


def test_a_model_drafting_for_itself_accepts_everything():
    """target == draft (one object): each keeps its own cache, every draft is accepted, and the
    output is plain greedy decoding."""
    cfg = lmzoo.ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, intermediate_size=64, max_seq_len=128)
    torch.manual_seed(0)
    m = lmzoo.Transformer(cfg).eval()
    ids = torch.tensor([[3, 9, 4]])
    stats = SpeculativeStats()
    out = speculative_generate(m, m, ids, max_new_tokens=16, k=4, eos_token_id=[], stats=stats)
    assert torch.equal(out, lmzoo.generate(m, ids, max_new_tokens=16, eos_token_id=[]))
    assert stats.accepted == stats.drafted
