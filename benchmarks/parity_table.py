"""Max |logit diff| of lmzoo vs its reference for every transformers-backed parity case in
tests/test_parity.py (fp32, CPU, random perturbed weights, batch 2 x 24 tokens), as a markdown table.

    python benchmarks/parity_table.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lmzoo  # noqa: E402
from tests.helpers import max_logit_diff, random_ids  # noqa: E402
from tests.test_parity import CASES, V, build_reference  # noqa: E402


def main() -> None:
    print("| case | reference class | model_type | max abs logit diff |")
    print("|---|---|---|---|")
    for name in sorted(CASES):
        with tempfile.TemporaryDirectory() as d:
            ref = build_reference(name, Path(d))
            ours = lmzoo.from_pretrained(d, dtype=torch.float32)
            diff = max_logit_diff(ref, ours, random_ids(V, (2, 24)))
            print(f"| {name} | {type(ref).__name__} | {ref.config.model_type} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
