"""ChatGLM-6B (v1, GLM proper) against tests/refs/chatglm6b_ref.py, an independent implementation of
THUDM's published modeling_chatglm.py: 2-D RoPE with float16 tables, the prefix-LM mask, DeepNorm-style
scaled residuals, per-layer query-key scaling, tied head."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import lmzoo
from tests.helpers import ATOL, cache_vs_recompute, left_pad
from tests.refs import chatglm6b_ref as ref

V = 160
MASK, GMASK, SOP, EOP = 150, 151, 152, 153
CFG = {
    "model_type": "chatglm", "architectures": ["ChatGLMModel"], "vocab_size": V, "hidden_size": 48,
    "num_layers": 3, "num_attention_heads": 3, "layernorm_epsilon": 1e-5, "inner_hidden_size": 96,
    "max_sequence_length": 128, "position_encoding_2d": True, "bos_token_id": SOP, "eos_token_id": EOP,
    "mask_token_id": MASK, "gmask_token_id": GMASK, "pad_token_id": 3, "quantization_bit": 0,
    "pre_seq_len": None, "torch_dtype": "float32",
}


def _state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    d, f = cfg["hidden_size"], cfg["inner_hidden_size"]
    shapes = {"transformer.word_embeddings.weight": (cfg["vocab_size"], d),
              "transformer.final_layernorm.weight": (d,), "transformer.final_layernorm.bias": (d,)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (d,), p + "input_layernorm.bias": (d,),
                   p + "post_attention_layernorm.weight": (d,), p + "post_attention_layernorm.bias": (d,),
                   p + "attention.query_key_value.weight": (3 * d, d), p + "attention.query_key_value.bias": (3 * d,),
                   p + "attention.dense.weight": (d, d), p + "attention.dense.bias": (d,),
                   p + "mlp.dense_h_to_4h.weight": (f, d), p + "mlp.dense_h_to_4h.bias": (f,),
                   p + "mlp.dense_4h_to_h.weight": (d, f), p + "mlp.dense_4h_to_h.bias": (d,)}
    g = torch.Generator().manual_seed(seed)
    return {k: (1.0 if k.endswith("layernorm.weight") else 0.0) + torch.randn(s, generator=g) * 0.3
            for k, s in shapes.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("chatglm6b"))


def write_checkpoint(d):
    """A tiny random ChatGLM-6B checkpoint in THUDM's layout; returns (dir, state)."""
    state = _state(CFG)
    # the release stores lm_head.weight too (the same matrix; transformers ties it to the embeddings)
    save_file(state | {"lm_head.weight": state["transformer.word_embeddings.weight"].clone(),
                       "transformer.layers.0.attention.rotary_emb.inv_freq": torch.ones(6).half()},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(CFG))
    return d, state


def _prompt(n: int, seed: int, mask: int = GMASK) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 140, (n,), generator=g).tolist() + [mask, SOP]


def test_config_is_glm_proper(checkpoint):
    m = lmzoo.from_pretrained(checkpoint[0])
    c = m.config
    assert (c.position, c.norm_placement, c.mlp, c.prefix_lm, c.rope_table_dtype) == \
        ("rope_2d", "deepnorm", "gelu_tanh", True, "float16")
    assert c.deepnorm_alpha == pytest.approx(6 ** 0.5)
    assert m.lm_head.weight is m.embed.weight


@pytest.mark.parametrize("masks", [(GMASK,), (MASK,), (MASK, GMASK)])
def test_logits_match_reference(checkpoint, masks):
    d, state = checkpoint
    m = lmzoo.from_pretrained(d)
    # mask tokens mid-prompt ([MASK] infilling) and at the end ([gMASK] generation); with both, the
    # [gMASK] position wins
    ids = _prompt(9, 1)[:-2] + [masks[0]] + _prompt(4, 2)[:-2] + [masks[-1], SOP] + _prompt(6, 3)[:-2]
    with torch.no_grad():
        ours = m(torch.tensor([ids]))
    want = ref.logits(state, CFG, ids)
    assert (ours - want).abs().max() <= ATOL


def test_greedy_matches_reference_incremental_decode(checkpoint):
    d, state = checkpoint
    m = lmzoo.from_pretrained(d)
    ids = _prompt(11, 4)
    ours = lmzoo.generate(m, torch.tensor([ids]), max_new_tokens=20, eos_token_id=[])
    assert ours[0].tolist() == ref.greedy(state, CFG, ids, 20)


def test_cache_matches_recompute(checkpoint):
    m = lmzoo.from_pretrained(checkpoint[0])
    ids = torch.tensor([_prompt(7, 5) + list(range(20, 40)), _prompt(7, 6) + list(range(60, 80))])
    assert cache_vs_recompute(m, ids, n_prefill=9) <= ATOL


def test_left_padded_batch_equals_each_alone(checkpoint):
    d, state = checkpoint
    m = lmzoo.from_pretrained(d)
    prompts = [_prompt(5, 7), _prompt(13, 8), _prompt(9, 9, mask=MASK)]
    ids, mask = left_pad([torch.tensor(p) for p in prompts], pad=3)
    batch = lmzoo.generate(m, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[])
    for row, p in zip(batch, prompts):
        assert row.tolist() == ref.greedy(state, CFG, p, 20)
    with torch.no_grad():  # and the prefill logits of every real position
        logits = m(ids, attention_mask=mask)
    for i, p in enumerate(prompts):
        assert (logits[i, -len(p):] - ref.logits(state, CFG, p)[0]).abs().max() <= ATOL


def test_prefix_is_bidirectional_and_span_causal(checkpoint):
    """The context before <sop> sees its own future; tokens from <sop> on do not."""
    m = lmzoo.from_pretrained(checkpoint[0])
    ids = _prompt(8, 10) + [40, 41, 42]
    changed = list(ids)
    changed[5] = 99  # a context token: every position's output changes
    with torch.no_grad():
        a, b = m(torch.tensor([ids])), m(torch.tensor([changed]))
    assert (a[0, :5] - b[0, :5]).abs().max() > 1e-3
    later = list(ids)
    later[-1] = 77  # the last generated token: nothing before it changes
    with torch.no_grad():
        c = m(torch.tensor([later]))
    assert (a[0, :-1] - c[0, :-1]).abs().max() == 0


def test_input_without_sop_is_a_clear_error(checkpoint):
    m = lmzoo.from_pretrained(checkpoint[0])
    with pytest.raises(ValueError, match=r"<sop> token \(id 152\).*\[gMASK\] <sop>"):
        m(torch.tensor([[5, 6, 7, GMASK]]))


@pytest.mark.parametrize("change,match", [({"pre_seq_len": 8}, "P-tuning"), ({"quantization_bit": 4}, "quantis"),
                                          ({"position_encoding_2d": False}, "1-D positions")])
def test_unsupported_variants_are_refused(tmp_path, change, match):
    (tmp_path / "config.json").write_text(json.dumps(CFG | change))
    save_file(_state(CFG), str(tmp_path / "model.safetensors"))
    with pytest.raises(lmzoo.errors.UnsupportedModelError, match=match):
        lmzoo.from_pretrained(tmp_path)


# --- explicit layouts: Transformer.forward(ids, positions=, allowed=) (GLM blank-infilling training) --

def _blank_rows():
    """Two GLM blank-infilling rows of different lengths (spans given), padded into one batch."""
    from lmzoo.train.glm import blank_infilling, collate

    a = blank_infilling(_prompt(14, 11)[:-2], [(2, 4), (7, 8), (10, 13)], mask=MASK, start=SOP, end=EOP,
                        order=[2, 0, 1], first_position=0)
    b = blank_infilling(_prompt(9, 12)[:-2], [(5, 9)], mask=GMASK, start=SOP, end=EOP, order=[0],
                        first_position=0)
    return (a, b), collate([a, b], pad=3)


def test_explicit_layout_matches_the_prefix_lm_path_and_reference(checkpoint):
    """Where they coincide (one [gMASK] span at the end: ChatGLM-6B's own prompt layout), the explicit
    mask and positions give the logits of the ordinary prefix-LM forward and of the reference."""
    d, state = checkpoint
    m = lmzoo.from_pretrained(d)
    ids = _prompt(10, 13) + [20, 21, 22, 23]
    mask, pos, _, _ = ref.masks_and_positions(ids, CFG)
    with torch.no_grad():
        explicit = m(torch.tensor([ids]), positions=pos, allowed=~mask[:, 0])
        ordinary = m(torch.tensor([ids]))
    assert (explicit - ordinary).abs().max() <= ATOL
    assert (explicit - ref.logits(state, CFG, ids)).abs().max() <= ATOL


def test_blank_infilling_batch_matches_reference(checkpoint):
    """Several spans, Part B shuffled, two padded rows: every real position's logits equal the
    reference run with the same ids, 2-D positions and mask (each row alone)."""
    d, state = checkpoint
    m = lmzoo.from_pretrained(d)
    rows, b = _blank_rows()
    with torch.no_grad():
        ours = m(b.ids, positions=b.positions, allowed=b.allowed)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        want, _ = ref.forward(state, CFG, torch.tensor([r.input_ids]), r.position_ids[None],
                              ~r.attention_mask[None, None])
        assert (ours[i, :n] - want[0]).abs().max() <= ATOL


def test_part_b_logits_ignore_what_they_must_not_see(checkpoint):
    """Perturbation: changing a Part B token changes no Part A logit and no earlier Part B logit (nor
    the other row); changing a Part A token changes Part B's logits."""
    m = lmzoo.from_pretrained(checkpoint[0])
    (a, _), b = _blank_rows()
    A, n = a.part_a_len, len(a.input_ids)
    with torch.no_grad():
        base = m(b.ids, positions=b.positions, allowed=b.allowed)
        for t in range(A, n):
            ids = b.ids.clone()
            ids[0, t] = 99 if int(ids[0, t]) != 99 else 98
            out = m(ids, positions=b.positions, allowed=b.allowed)
            assert (out[0, :t] - base[0, :t]).abs().max() == 0, t   # nothing before t looks at t
            assert (out[1] - base[1]).abs().max() == 0
            if t + 1 < n:
                assert (out[0, t + 1:n] - base[0, t + 1:n]).abs().max() > 1e-4  # later Part B does
        ids = b.ids.clone()
        ids[0, 0] = 99
        out = m(ids, positions=b.positions, allowed=b.allowed)
        assert (out[0, A:n] - base[0, A:n]).abs().max() > 1e-3


def test_explicit_layout_errors_show_the_offending_values(checkpoint):
    m = lmzoo.from_pretrained(checkpoint[0])
    _, b = _blank_rows()
    with pytest.raises(ValueError, match=r"bool \(B, T, T\) = \(2, 20, 20\).*int64 \(2, 20, 20\)"):
        m(b.ids, positions=b.positions, allowed=b.allowed.long())
    with pytest.raises(ValueError, match=r"needs its \(B, 2, T\) positions too"):
        m(b.ids, allowed=b.allowed)
    empty = b.allowed.clone()
    empty[1, 3] = False
    with pytest.raises(ValueError, match=r"allowed\[1, 3\].*no key"):
        m(b.ids, positions=b.positions, allowed=empty)
    with pytest.raises(ValueError, match="cannot be combined with"):
        m(b.ids, positions=b.positions, allowed=b.allowed, attention_mask=torch.ones_like(b.ids))
