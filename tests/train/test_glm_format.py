"""GLM blank infilling reproduces the seeds' (and the GLM paper's Figure 2) worked example."""

import pytest
import torch

from lmzoo.train.glm import blank_infilling

X = ["x1", "x2", "x3", "x4", "x5", "x6"]


def test_seed_example():
    # spans [x3] and [x5, x6]; Part B in the figure's order: [x5 x6] first, then [x3]
    b = blank_infilling(X, [(2, 3), (4, 6)], order=[1, 0])
    assert b.input_ids == ["x1", "x2", "[M]", "x4", "[M]", "[S]", "x5", "x6", "[S]", "x3"]
    assert b.targets == [None] * 5 + ["x5", "x6", "[E]", "x3", "[E]"]
    assert b.position_ids.tolist() == [[1, 2, 3, 4, 5, 5, 5, 5, 3, 3], [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]]
    # the seed's statements: x3 -> [3, 2], x5 -> [5, 2], x6 -> [5, 3], x1 -> [1, 0], x2 -> [2, 0], x4 -> [4, 0]
    where = {t: b.position_ids[:, i].tolist() for i, t in enumerate(b.input_ids) if t.startswith("x")}
    assert where == {"x1": [1, 0], "x2": [2, 0], "x4": [4, 0], "x5": [5, 2], "x6": [5, 3], "x3": [3, 2]}
    m = b.attention_mask
    assert m[:5, :5].all() and not m[:5, 5:].any()  # Part A: bidirectional, blind to Part B
    assert m[5:, :5].all()  # Part B sees Part A
    assert torch.equal(m[5:, 5:], torch.ones(5, 5, dtype=torch.bool).tril())  # and its past, causally


def test_shuffle_is_seeded_and_bad_spans_rejected():
    a = blank_infilling(X, [(0, 1), (2, 3), (4, 6)], seed=3)
    assert a.input_ids == blank_infilling(X, [(0, 1), (2, 3), (4, 6)], seed=3).input_ids
    with pytest.raises(ValueError, match="overlap"):
        blank_infilling(X, [(1, 3), (2, 4)])
    with pytest.raises(ValueError, match="inside"):
        blank_infilling(X, [(4, 9)])
