"""GLM's autoregressive blank infilling (Du et al. 2022, "GLM: General Language Model Pretraining
with Autoregressive Blank Infilling"), as the seeds describe it:

    x = [x1 x2 x3 x4 x5 x6], spans [x3] and [x5 x6] blanked
    Part A (the corrupted text):   x1 x2 [M] x4 [M]
    Part B (the spans, shuffled):  [S] x5 x6   [S] x3        inputs
                                   x5  x6 [E]  x3  [E]       targets
    position 1 (where in A):       1 2 3 4 5 | 5 5 5 | 3 3   a span's tokens sit at its [M]'s position
    position 2 (inside the span):  0 0 0 0 0 | 1 2 3 | 1 2
    attention: Part A sees all of Part A (bidirectional) and nothing of B; a Part B token sees Part A
    and the Part B tokens before it (causal).

Positions are 1-based here as in the paper's figure and the seeds; pass `first_position=0` for the
0-based ids the released models use.

`BlankSampler` chooses the blanks as GLM's pre-training does (THUDM/GLM blocklm_utils.py,
ConstructBlockStrategy; re-implemented from the algorithm, no code shared), one of three tasks per row:

    [MASK]   short spans: lengths ~ Poisson(3) restricted to 1..39, drawn until they cover 15% of the
             row; placed uniformly at random with at least one unmasked token between spans, never
             across a document end (EOS)
    [sMASK]  whole sentences (ending in . ? ! ; : or a newline), drawn in random order until 15% of
             the row is covered
    [gMASK]  one long suffix: its length uniform in [0.5 n, n - 2] (GLM's document-level task,
             GLM-130B's "the rest of the sequence"), the prefix kept as bidirectional context

and `glm_batches` pads the rows into (ids, targets, 2-D positions, allowed-attention) batches that
the ordinary `Transformer.forward(ids, positions=, allowed=)` takes; `GLMObjective` is the loss on
Part B for the shared training loop.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from lmzoo.errors import ConfigError
from lmzoo.train.data import IGNORE
from lmzoo.train.loop import Objective


@dataclass
class BlankInfilling:
    input_ids: list          # Part A then Part B inputs
    targets: list            # None for Part A (no loss), the next Part B token otherwise
    position_ids: torch.Tensor   # (2, L): position 1, position 2
    attention_mask: torch.Tensor  # (L, L) bool, True = may attend
    part_a_len: int


def blank_infilling(tokens: list, spans: list[tuple[int, int]], *, mask="[M]", start="[S]", end="[E]",
                    order: list[int] | None = None, seed: int | None = None,
                    first_position: int = 1) -> BlankInfilling:
    """Build GLM's input for `tokens` with `spans` (0-based, half-open, non-overlapping) blanked.

    order: Part B's span order (indices into `spans`, sorted by start); None shuffles with `seed`.
    """
    spans = sorted(spans)
    for (_s0, e0), (s1, _) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"spans {spans} overlap")
    if any(not 0 <= s < e <= len(tokens) for s, e in spans):
        raise ValueError(f"spans {spans} must be non-empty and inside the {len(tokens)} tokens")
    part_a, mask_pos, prev = [], [], 0
    for s, e in spans:
        part_a += tokens[prev:s]
        mask_pos.append(len(part_a) + first_position)
        part_a.append(mask)
        prev = e
    part_a += tokens[prev:]
    if order is None:
        order = list(range(len(spans)))
        random.Random(seed).shuffle(order)
    if sorted(order) != list(range(len(spans))):
        raise ValueError(f"order {order} is not a permutation of {len(spans)} spans")
    inputs, targets = list(part_a), [None] * len(part_a)
    pos1 = list(range(first_position, first_position + len(part_a)))
    pos2 = [0] * len(part_a)
    for j in order:
        s, e = spans[j]
        span = tokens[s:e]
        inputs += [start] + span
        targets += span + [end]
        pos1 += [mask_pos[j]] * (len(span) + 1)
        pos2 += list(range(1, len(span) + 2))
    L, A = len(inputs), len(part_a)
    q, k = torch.arange(L)[:, None], torch.arange(L)[None, :]  # (L, 1) queries, (1, L) keys
    # everyone sees Part A; Part A sees nothing else; Part B sees itself causally
    # (comparisons, not a bool tril: that is ~100x slower on CPU and this runs per training row)
    allowed = (k < A) | ((q >= A) & (k <= q))
    return BlankInfilling(inputs, targets, torch.tensor([pos1, pos2]), allowed, A)


# --- which blanks: GLM's span sampling ----------------------------------------------------------------
#
# The task mix: the fraction of rows given each of [MASK] / [sMASK] / [gMASK].
#   GLM-130B (Zeng et al. 2022, arXiv:2210.02414, pre-training setup, "Self-Supervised Blank Infilling
#     (95% tokens)"): [MASK] spans (Poisson(3), adding up to 15%) in 30% of the training sequences,
#     [gMASK] on the rest of the sequence after a kept prefix in the other 70% (no [sMASK]; the other
#     5% of its tokens, multi-task instruction pre-training, is not blank infilling and not done here).
#   GLM-10B (THUDM/GLM config/ds_block_10B.sh: --task-mask --bert-prob 0.4 --gap-sentence-prob 0.3,
#     the rest generation): [MASK] 40%, [sMASK] 30%, [gMASK] 30%.
GLM130B_MIX = {"mask": 0.3, "smask": 0.0, "gmask": 0.7}
GLM10B_MIX = {"mask": 0.4, "smask": 0.3, "gmask": 0.3}
TASKS = ("mask", "smask", "gmask")
SENTENCE_END = (".", "?", "!", ";", ":", "\n")   # GLM's contains_sentence_end


@dataclass(frozen=True)
class GLMTokens:
    """GLM's special token ids. smask is optional (only the [sMASK] task needs it); doc_end is the
    corpus's end-of-document token (spans never cover it), None when the rows hold one text each."""

    mask: int
    gmask: int
    sop: int
    eop: int
    smask: int | None = None
    doc_end: int | None = None
    pad: int = 0


def truncated_poisson(lam: float, max_len: int) -> list[float]:
    """P(len = k) for k = 1..max_len, Poisson(lam) restricted to that range (unnormalised: the pmf)."""
    return [math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)) for k in range(1, max_len + 1)]


def place_spans(lengths: list[int], region: int, rng: random.Random, offset: int = 0) -> list[tuple[int, int]]:
    """Spans of the given lengths, in that order, at uniformly random places inside [offset, offset +
    region) with at least one unmasked token between consecutive spans (GLM's sample_spans).

    Of the region's region - sum(lengths) unmasked tokens, len - 1 are reserved as separators; the
    other `slack` are shared out by sorting one uniform draw from 0..slack per span."""
    slack = region - sum(lengths) - (len(lengths) - 1)
    if slack < 0:
        raise ValueError(f"spans of lengths {lengths} with gaps do not fit in {region} tokens")
    cuts = sorted(rng.randrange(slack + 1) for _ in lengths)
    spans, shift = [], offset
    for cut, n in zip(cuts, lengths):
        spans.append((shift + cut, shift + cut + n))
        shift += n + 1
    return spans


@dataclass
class GLMRow:
    task: str                          # "mask" | "smask" | "gmask"
    spans: list[tuple[int, int]]       # blanked spans of the text, sorted
    order: list[int]                   # Part B's order (indices into spans)
    row: BlankInfilling                # Part A + Part B, 0-based 2-D positions


class BlankSampler:
    """GLM's pre-training blanks for a row of text tokens, from a caller-owned random.Random.

    The draws, in order (a test re-implements them independently): rng.random() picks the task by
    `mix`; [MASK]: rng.choices(1..max_span, weights=Poisson pmf) until the lengths reach
    int(mask_ratio * n) (at least one span), rng.shuffle(lengths), then per document, shortest first,
    rng.randrange per span (place_spans); [sMASK]: rng.shuffle(sentences); [gMASK]: rng.randint for
    the suffix length; finally rng.shuffle(order) for Part B.

    Documents (runs between doc_end tokens) get spans as GLM shares them out: every document but the
    longest takes the next lengths while they total <= int(mask_ratio * its length); the longest takes
    the rest while lengths + one separator each fit; lengths that fit nowhere are dropped.

    Where this differs from THUDM's code: a row whose lengths do not all fit keeps the spans that do
    (GLM drops the sample); the lengths are shuffled once (GLM shuffles twice: the same distribution);
    the last document is not shortened by one token (GLM's rows end in a token it never masks);
    [gMASK] always blanks a suffix (GLM's code blanks one span anywhere in half of those rows; GLM-130B
    describes the suffix) and, like every span, ends in <eop>; at least one [MASK] span per row.
    """

    def __init__(self, *, tokens: GLMTokens, mix: dict | None = None, mask_ratio: float = 0.15,
                 sentence_ratio: float = 0.15, poisson_lambda: float = 3.0, max_span: int = 39,
                 gmask_min_ratio: float = 0.5, sentence_end=None) -> None:
        mix = dict(GLM130B_MIX if mix is None else mix)
        if set(mix) - set(TASKS) or any(not (isinstance(v, (int, float)) and v >= 0) for v in mix.values()) \
                or abs(sum(mix.values()) - 1) > 1e-6:
            raise ValueError(f"mix must give fractions >= 0 of {TASKS} summing to 1, got {mix}")
        if mix.get("smask", 0) > 0 and (tokens.smask is None or sentence_end is None):
            raise ValueError(f"the [sMASK] task (mix {mix}) needs tokens.smask (got {tokens.smask}) and a "
                             "sentence_end set of token ids")
        if not 0 < mask_ratio < 1 or not 0 < sentence_ratio < 1:
            raise ValueError(f"mask_ratio and sentence_ratio must be in (0, 1), got {mask_ratio}, {sentence_ratio}")
        if not poisson_lambda > 0 or max_span < 1:
            raise ValueError(f"poisson_lambda must be > 0 and max_span >= 1, got {poisson_lambda}, {max_span}")
        if not 0 <= gmask_min_ratio < 1:
            raise ValueError(f"gmask_min_ratio must be in [0, 1), got {gmask_min_ratio}")
        self.tokens, self.mask_ratio, self.sentence_ratio = tokens, mask_ratio, sentence_ratio
        self.p = [mix.get(t, 0.0) for t in TASKS]
        self.weights = truncated_poisson(poisson_lambda, max_span)
        self.max_span, self.gmask_min_ratio = max_span, gmask_min_ratio
        self.sentence_end = frozenset(sentence_end or ())

    # --- the three tasks ------------------------------------------------------------------------
    def task(self, rng: random.Random) -> str:
        u = rng.random()
        return "mask" if u < self.p[0] else "smask" if u < self.p[0] + self.p[1] else "gmask"

    def mask_spans(self, text: list[int], rng: random.Random) -> list[tuple[int, int]]:
        n = len(text)
        goal = max(1, int(self.mask_ratio * n))
        lengths, total = [], 0
        while total < goal:
            k = rng.choices(range(1, self.max_span + 1), weights=self.weights)[0]
            lengths.append(k)
            total += k
        rng.shuffle(lengths)
        docs, start = [], 0  # (start, length) of each run of tokens between document ends
        for i, t in enumerate(text + [None]):
            if t is None or t == self.tokens.doc_end:
                if i > start:
                    docs.append((start, i - start))
                start = i + 1
        docs.sort(key=lambda d: d[1])  # stable: equal lengths keep their order
        spans, used = [], 0
        for j, (off, length) in enumerate(docs):
            take, cum = 0, 0
            last = j == len(docs) - 1
            budget = length if last else int(self.mask_ratio * length)
            while used + take < len(lengths):
                nxt = lengths[used + take]
                if cum + nxt + (take if last else 0) > budget:
                    break
                cum, take = cum + nxt, take + 1
            if take:
                spans += place_spans(lengths[used:used + take], length, rng, offset=off)
                used += take
        return sorted(spans)

    def sentence_spans(self, text: list[int], rng: random.Random) -> list[tuple[int, int]]:
        sentences, last = [], 0
        for i, t in enumerate(text):
            if t == self.tokens.doc_end:
                last = i + 1
            elif t in self.sentence_end:
                if last < i + 1:
                    sentences.append((last, i + 1))
                last = i + 1
        if last < len(text):
            sentences.append((last, len(text)))
        rng.shuffle(sentences)
        goal, spans, covered = int(self.sentence_ratio * len(text)), [], 0
        for s, e in sentences:
            spans.append((s, e))
            covered += e - s
            if covered >= goal:
                break
        return sorted(spans)

    def suffix_span(self, text: list[int], rng: random.Random) -> list[tuple[int, int]]:
        n = len(text)
        k = rng.randint(int(self.gmask_min_ratio * n), n - 2)
        return [(n - k, n)]

    def sample(self, text: list[int], rng: random.Random) -> GLMRow:
        """One GLM training row for `text` (a list of token ids, at least 4)."""
        if len(text) < 4:
            raise ValueError(f"GLM blank infilling needs rows of at least 4 tokens, got {len(text)}")
        task = self.task(rng)
        spans = self.sentence_spans(text, rng) if task == "smask" else []
        if task == "smask" and not spans:  # no sentence to blank (all document ends): short spans
            task = "mask"
        if task == "mask":
            spans = self.mask_spans(text, rng)
        elif task == "gmask":
            spans = self.suffix_span(text, rng)
        order = list(range(len(spans)))
        rng.shuffle(order)
        mask = {"mask": self.tokens.mask, "smask": self.tokens.smask, "gmask": self.tokens.gmask}[task]
        row = blank_infilling(text, spans, mask=mask, start=self.tokens.sop, end=self.tokens.eop, order=order,
                              first_position=0)
        return GLMRow(task, spans, order, row)


def glm_text_len(seq_len: int, ratio: float = 0.15) -> int:
    """The longest text whose GLM row fits seq_len: a row is the text plus two tokens per span
    ([MASK] in Part A, <sop> in Part B), and a row of n tokens has at most int(ratio n) + 1 spans
    ([MASK] spans are >= 1 token each, drawn until they reach int(ratio n); [sMASK] sentences likewise,
    a suffix is one span)."""
    n = seq_len
    while n > 4 and n + 2 * (int(ratio * n) + 1) > seq_len:
        n -= 1
    if n + 2 * (int(ratio * n) + 1) > seq_len:
        raise ValueError(f"seq_len {seq_len} is too short for GLM blank infilling rows")
    return n


# --- batches ------------------------------------------------------------------------------------------

@dataclass
class GLMBatch:
    ids: torch.Tensor          # (B, T)  Part A then Part B, padded on the right
    targets: torch.Tensor      # (B, T)  the next Part B token; IGNORE on Part A and padding
    positions: torch.Tensor    # (B, 2, T) position in Part A, position inside the span
    allowed: torch.Tensor      # (B, T, T) bool: query t may attend key s
    lengths: torch.Tensor      # (B,) real tokens per row
    tasks: list = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


def collate(rows: list[BlankInfilling], *, pad: int = 0, tasks=()) -> GLMBatch:
    """Rows padded on the right to the longest; a padding token sees only itself (no empty softmax
    row) and no real token sees it."""
    B, T = len(rows), max(len(r.input_ids) for r in rows)
    ids = torch.full((B, T), pad, dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    positions = torch.zeros(B, 2, T, dtype=torch.long)
    allowed = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)
    for b, r in enumerate(rows):
        n = len(r.input_ids)
        ids[b, :n] = torch.tensor(r.input_ids)
        targets[b, :n] = torch.tensor([IGNORE if t is None else t for t in r.targets])
        positions[b, :, :n] = r.position_ids
        allowed[b, :n, :n] = r.attention_mask
    return GLMBatch(ids, targets, positions, allowed, torch.tensor([len(r.input_ids) for r in rows]), list(tasks))


def glm_batches(windows, sampler: BlankSampler, rows: int, seed: int, epoch: int):
    """GLM batches from lmzoo.train.corpus.TokenWindows (its windows are the texts, in its (seed,
    epoch) order); the blanks of batch j come from random.Random of (seed, epoch, j, rank), so an
    epoch's batches are the same however often, and wherever, they are made (resume)."""
    for j, b in enumerate(windows.batches(rows, seed, epoch)):
        rng = random.Random(f"glm/{seed}/{epoch}/{j}/{getattr(windows, 'rank', 0)}")
        made = [sampler.sample(text, rng) for text in b.ids.tolist()]
        yield collate([m.row for m in made], pad=sampler.tokens.pad, tasks=[m.task for m in made])


# --- the tokens a model / tokenizer has -----------------------------------------------------------------

_NAMES = {"mask": ("[MASK]",), "gmask": ("[gMASK]",), "smask": ("[sMASK]",),
          "sop": ("<sop>", "<|startofpiece|>"), "eop": ("<eop>", "<|endofpiece|>")}


def glm_tokens(cfg, tok=None) -> GLMTokens:
    """GLM's token ids: by name from the tokenizer ([MASK], [gMASK], [sMASK], <sop>, <eop>), else from
    the model config (mask_token_ids = [gMASK], [MASK], [sMASK]?; bos = <sop>; eos = <eop>)."""
    found = {}
    if tok is not None:
        for key, names in _NAMES.items():
            ids = [tok.token_to_id(n) for n in names]
            found[key] = next((i for i in ids if i is not None), None)
    masks = list(cfg.mask_token_ids) if cfg.prefix_lm else []
    from_cfg = {"gmask": masks[0] if masks else None, "mask": masks[1] if len(masks) > 1 else None,
                "smask": masks[2] if len(masks) > 2 else None,
                "sop": cfg.bos_token_id if cfg.prefix_lm else None,
                "eop": cfg.eos_token_id[0] if cfg.prefix_lm and cfg.eos_token_id else None}
    ids = {k: found.get(k) if found.get(k) is not None else from_cfg[k] for k in _NAMES}
    missing = [_NAMES[k][0] for k in ("mask", "gmask", "sop", "eop") if ids[k] is None]
    if missing:
        raise ConfigError(f"GLM blank infilling needs the tokens {missing}: the tokenizer has none by those names "
                          f"and the model config {cfg.name!r} gives none (prefix_lm={cfg.prefix_lm}, "
                          f"mask_token_ids={list(cfg.mask_token_ids)}, bos_token_id={cfg.bos_token_id}); use a GLM "
                          "config (e.g. ChatGLM-6B) or set them with --set")
    bad = {k: v for k, v in ids.items() if v is not None and not 0 <= v < cfg.vocab_size}
    if bad:
        raise ConfigError(f"GLM token ids {bad} are outside the model's vocabulary of {cfg.vocab_size}")
    doc_end = tok.eos_token_ids[0] if tok is not None and tok.eos_token_ids else None
    return GLMTokens(mask=ids["mask"], gmask=ids["gmask"], sop=ids["sop"], eop=ids["eop"], smask=ids["smask"],
                     doc_end=doc_end, pad=ids["eop"])


def sentence_end_ids(tok) -> frozenset:
    """Token ids whose text holds a sentence end (. ? ! ; : or a newline), GLM's test per token."""
    return frozenset(i for i in range(tok.vocab_size)
                     if any(c in tok.decode([i], skip_special_tokens=False) for c in SENTENCE_END))


# --- the objective -------------------------------------------------------------------------------------

class GLMObjective(Objective):
    """GLM's autoregressive blank infilling loss: cross-entropy on Part B's targets only (each span's
    tokens then <eop>), the model run by its ordinary forward with the batch's 2-D positions and
    attention layout. Same interface as lmzoo.train.loop.Objective."""

    def __init__(self, *, loss_chunk: int = 256) -> None:
        if loss_chunk < 1:
            raise ValueError(f"loss_chunk must be >= 1, got {loss_chunk}")
        self.loss_chunk = loss_chunk

    def loss(self, model, b: GLMBatch):
        from lmzoo.train.loss import token_losses_sum

        if model.config.position != "rope_2d":
            raise ValueError(f"GLM blank infilling feeds 2-D positions, for position='rope_2d' models (ChatGLM-6B); "
                             f"this model has position={model.config.position!r}")
        dev = next(model.parameters()).device
        h = model(b.ids.to(dev), positions=b.positions.to(dev), allowed=b.allowed.to(dev), hidden_only=True)
        return token_losses_sum(model, h, b.targets.to(dev), chunk=self.loss_chunk)[0], {}

    def units(self, b: GLMBatch) -> int:
        return int((b.targets != IGNORE).sum())
