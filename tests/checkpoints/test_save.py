"""HF checkpoints out: every family lmzoo loads from transformers goes back out as a checkpoint that
transformers loads with no missing or unexpected keys and the same logits; the default GGUF model
exports as an HF Llama with its tokenizer; merged adapters equal model + adapter."""

from __future__ import annotations

import pytest
import torch

import lmzoo
from lmzoo.checkpoints.peft import add_lora, save_adapter
from lmzoo.checkpoints.save import save_hf
from lmzoo.errors import ConfigError
from lmzoo.nn.lora import merge_lora
from tests.helpers import ATOL, random_ids
from tests.test_parity import CASES, SDPA_REFERENCE, V, build_reference

transformers = pytest.importorskip("transformers")


def _load_hf(path, name=""):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True,
        attn_implementation="sdpa" if name in SDPA_REFERENCE else "eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_through_transformers(name, tmp_path):
    build_reference(name, tmp_path / "src")
    ours = lmzoo.from_pretrained(tmp_path / "src", dtype=torch.float32)
    save_hf(ours, tmp_path / "out")
    ref = _load_hf(tmp_path / "out", name)
    if hasattr(ref.config, "_experts_implementation"):
        ref.config._experts_implementation = "eager"
    ids = random_ids(V, (2, 10))
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids)).abs().max().item() <= ATOL
    again = lmzoo.from_pretrained(tmp_path / "out", dtype=torch.float32)
    for (n, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_merged_adapter_equals_model_plus_adapter(tmp_path):
    build_reference("gpt-neox-parallel", tmp_path / "src")
    ours = lmzoo.from_pretrained(tmp_path / "src", dtype=torch.float32)
    add_lora(ours, targets="all-linear", r=4, alpha=8, dora=True)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    save_adapter(ours, tmp_path / "adapter")
    with pytest.raises(ConfigError, match="LoRA layers"):
        save_hf(ours, tmp_path / "bad")
    ids = random_ids(V, (2, 10), seed=2)
    with torch.no_grad():
        want = ours(ids)
    save_hf(merge_lora(ours), tmp_path / "merged")
    with torch.no_grad():
        assert (_load_hf(tmp_path / "merged")(ids).logits - want).abs().max().item() <= ATOL


def test_default_gguf_model_exports_as_hf_llama(tmp_path, smollm2_path):
    from lmzoo.tokenizer import load_tokenizer

    ours = lmzoo.from_pretrained(smollm2_path, keep_quantized=False)
    tok = load_tokenizer(smollm2_path)
    save_hf(ours, tmp_path / "hf", tokenizer=tok)
    ref = _load_hf(tmp_path / "hf")
    ids = torch.tensor([tok.encode("The capital of France is")])
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids)).abs().max().item() <= ATOL
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello wörld 👋  code:\tx = 1 <|im_end|>"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    msgs = [{"role": "user", "content": "Hi"}]
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == tok.apply_chat_template(msgs)
    with pytest.raises(ConfigError, match="not empty"):
        save_hf(ours, tmp_path / "hf")


def test_streamed_safetensors_read_back_by_safetensors(tmp_path):
    """The export's own safetensors writer (tensor by tensor under a planned header): safetensors' reader
    gives back every tensor exactly — float, half, integer and bool dtypes, a scalar, an empty tensor,
    odd byte counts — and a tensor out of step with the plan is an error."""
    from safetensors.torch import load_file

    from lmzoo.checkpoints.save import write_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
               "c": torch.randn(2, 3, generator=g).half(), "ids": torch.arange(5), "mask": torch.tensor([True, False, True]),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "bytes": torch.arange(3, dtype=torch.uint8)}
    entries = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    write_safetensors(tmp_path / "x.safetensors", entries, iter(tensors.items()))
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with pytest.raises(RuntimeError, match="out of step"):
        write_safetensors(tmp_path / "y.safetensors", entries, iter(reversed(tensors.items())))
