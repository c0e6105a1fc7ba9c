"""Direct Preference Optimisation (Rafailov et al. 2023), with the loss and metrics as trl defines them.

For a prompt x with a chosen reply y_w and a rejected one y_l, log-probabilities summed over each
reply's tokens (the prompt is not scored):

    h        = [log pi(y_w|x) - log pi(y_l|x)] - [log ref(y_w|x) - log ref(y_l|x)]
    loss     = -log sigmoid(beta * h)                               (trl's loss_type="sigmoid")
    rewards/chosen   = beta * (log pi(y_w|x) - log ref(y_w|x))      rewards/rejected likewise
    rewards/accuracy = mean(rewards/chosen > rewards/rejected)      rewards/margin = mean(chosen - rejected)

The reference is the model as training starts (for LoRA: the frozen base, the adapters being zero
then); its log-probabilities are computed once, before the first step, so no second model is kept.
With policy == reference, h = 0 and the first loss is ln 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmzoo.errors import ConfigError
from lmzoo.train.data import IGNORE, Batch, DataError, Example, Record, collate, read_records
from lmzoo.train.loop import Objective
from lmzoo.train.loss import sequence_logprobs


@dataclass
class Pair:
    chosen: Example
    rejected: Example
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0
    where: str = ""


@dataclass
class PairBatch:
    batch: Batch               # rows 2i = chosen, 2i + 1 = rejected
    ref: torch.Tensor          # (2P,) reference log-probs in the same order

    @property
    def n_tokens(self) -> int:
        return self.batch.n_tokens


def _messages(r: Record, value, key: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}] if key != "prompt" else [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 and m.get("role") in ("system", "user", "assistant") for m in value):
        return value
    raise DataError(f"{r.where}: field {key!r} must be a string or a list of {{'role', 'content'}} messages")


def encode_pair(tok, r: Record) -> Pair:
    d = r.data
    if isinstance(d, Exception):
        raise d
    if not isinstance(d, dict):
        raise DataError(f"{r.where}: record is {type(d).__name__}; expected a JSON object")
    for key in ("chosen", "rejected"):
        if key not in d:
            raise DataError(f"{r.where}: record has no {key!r} field (fields: {sorted(d)})")
    prompt = _messages(r, d["prompt"], "prompt") if d.get("prompt") is not None else None
    sides = []
    for key in ("chosen", "rejected"):
        msgs = _messages(r, d[key], key)
        if prompt is None:  # whole conversations: the prompt is everything before the last reply
            if msgs[-1]["role"] != "assistant":
                raise DataError(f"{r.where}: {key} must end with an assistant message")
            p, msgs = msgs[:-1], msgs[-1:]
        else:
            p = prompt
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataError(f"{r.where}: {key} must be one assistant reply")
        sides.append((p, msgs))
    if sides[0][0] != sides[1][0]:
        raise DataError(f"{r.where}: chosen and rejected must share the same prompt")
    examples = []
    for p, reply in sides:
        ids, learn = tok.encode_chat_for_training(p + reply)
        start = len(tok.encode_chat(p))  # score only the final reply
        learn = [False] * start + learn[start:]
        targets = [ids[t + 1] if learn[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
        examples.append(Example(ids, targets, r.where))
    return Pair(examples[0], examples[1], where=r.where)


def load_pairs(path, tok, *, seq_len: int, skip_bad: bool = False) -> tuple[list[Pair], list[str]]:
    out, skipped = [], []
    for r in read_records(path):
        try:
            pair = encode_pair(tok, r)
            n = max(len(pair.chosen.ids), len(pair.rejected.ids))
            if n > seq_len:
                raise DataError(f"{r.where}: {n} tokens exceed --seq-len {seq_len} (a cut reply would be a "
                                "different preference)")
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e} (pass --skip-bad to skip and count bad records)") from None
            skipped.append(str(e))
            continue
        out.append(pair)
    if not out:
        raise DataError(f"{path}: no usable preference pairs")
    return out, skipped


def _pair_batch(chunk: list[Pair], pad_id: int = 0) -> PairBatch:
    examples = [e for p in chunk for e in (p.chosen, p.rejected)]
    ref = torch.tensor([v for p in chunk for v in (p.ref_chosen, p.ref_rejected)], dtype=torch.float32)
    return PairBatch(collate(examples, [[i] for i in range(len(examples))], pad_id), ref)


def pair_groups(pairs: list[Pair], *, pairs_per_batch: int, seed: int, epoch: int) -> list[list[Pair]]:
    """One epoch's pairs, batch by batch, in an order fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(pairs), generator=g).tolist()
    return [[pairs[i] for i in order[s:s + pairs_per_batch]] for s in range(0, len(order), pairs_per_batch)]


def pair_batches(pairs: list[Pair], *, pairs_per_batch: int, seed: int, epoch: int, pad_id: int = 0):
    """One epoch of pair batches in an order fixed by (seed, epoch)."""
    for group in pair_groups(pairs, pairs_per_batch=pairs_per_batch, seed=seed, epoch=epoch):
        yield _pair_batch(group, pad_id)


def reference_logprobs(model, pairs: list[Pair], *, batch_pairs: int = 4, chunk: int = 1024,
                       groups: list[list[Pair]] | None = None) -> None:
    """Fill each pair's reference log-probs from `model` as it is now, `batch_pairs` pairs a batch or
    in the given `groups` (the run's own batches: fine-tuning passes the first epoch's, so that the
    first step repeats its reference forward shape for shape: bf16 GEMMs, e.g. oneDNN's on AMX, round
    differently for different batch shapes). Gradients stay enabled (each batch's graph is dropped at
    once): the layers then take the path the training steps take (without gradients quantised layers
    take their inference kernels, which ignore autocast), so with the policy equal to the reference
    the first loss is ln 2 to float rounding, at either precision."""
    was = model.training
    model.eval()
    if groups is None:
        groups = [pairs[s:s + batch_pairs] for s in range(0, len(pairs), batch_pairs)]
    for group in groups:
        b = _pair_batch(group).batch
        h = model(b.ids, segment_ids=b.segments, hidden_only=True)
        lp = sequence_logprobs(model, h, b.targets, chunk=chunk).tolist()
        for j, p in enumerate(group):
            p.ref_chosen, p.ref_rejected = lp[2 * j], lp[2 * j + 1]
    model.train(was)


class DPOObjective(Objective):
    def __init__(self, beta: float = 0.1, loss_chunk: int = 1024) -> None:
        if not beta > 0:
            raise ConfigError(f"DPO beta must be > 0, got {beta}")
        self.beta, self.loss_chunk = beta, loss_chunk

    def loss(self, model, pb: PairBatch):
        b = pb.batch
        h = model(b.ids, segment_ids=b.segments, hidden_only=True)
        logp = sequence_logprobs(model, h, b.targets, chunk=self.loss_chunk)
        pc, pr = logp[0::2], logp[1::2]
        rc, rr = pb.ref[0::2].to(logp), pb.ref[1::2].to(logp)
        logits = (pc - pr) - (rc - rr)
        losses = -torch.nn.functional.logsigmoid(self.beta * logits)
        chosen_r, rejected_r = self.beta * (pc - rc).detach(), self.beta * (pr - rr).detach()
        metrics = {"rewards/chosen": chosen_r.mean(), "rewards/rejected": rejected_r.mean(),
                   "rewards/accuracy": (chosen_r > rejected_r).float().mean(),
                   "rewards/margin": (chosen_r - rejected_r).mean()}
        return losses.sum(), metrics

    def units(self, pb: PairBatch) -> int:
        return pb.batch.ids.shape[0] // 2
