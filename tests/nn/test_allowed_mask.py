"""`Transformer.forward(ids, positions=, allowed=)` is general, not GLM-only: with the causal mask it is
the ordinary forward (RoPE and ALiBi models), and a block-diagonal mask is the packed-segments forward."""

import pytest
import torch

from lmzoo.catalog import get_config
from lmzoo.nn.transformer import Transformer
from tests.helpers import ATOL


def _tiny(name: str) -> Transformer:
    cfg = get_config(name).replace(n_layer=2, n_embd=64, n_head=4, n_kv_head=2 if name.startswith("Llama") else 4,
                                   head_dim=None, intermediate_size=128, vocab_size=100, max_seq_len=64)
    torch.manual_seed(0)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("name", ["Llama-2-7B", "BLOOM-7B1"])
def test_causal_allowed_is_the_ordinary_forward(name):
    m = _tiny(name)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    causal = torch.ones(12, 12, dtype=torch.bool).tril().expand(2, 12, 12)
    with torch.no_grad():
        assert (m(ids, allowed=causal) - m(ids)).abs().max() <= ATOL
        # two packed segments: the same as segment_ids (positions restarting in the second)
        seg = torch.tensor([[0] * 5 + [1] * 7] * 2)
        block = causal & (seg[:, :, None] == seg[:, None, :])
        pos = torch.tensor([list(range(5)) + list(range(7))] * 2)
        assert (m(ids, allowed=block, positions=pos) - m(ids, segment_ids=seg)).abs().max() <= ATOL
