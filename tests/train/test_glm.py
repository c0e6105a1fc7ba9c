"""GLM's autoregressive blank infilling end to end (lmzoo.train.glm): the batch for a fixed seed against
an independent re-implementation of GLM's published algorithm (Du et al. 2022; THUDM/GLM
blocklm_utils.py ConstructBlockStrategy), the statistics of the blanks over many rows, the loss's
gradients against plain autograd, and a tiny ChatGLM-6B-shaped model that learns to fill blanks."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmzoo.config import ModelConfig
from lmzoo.errors import ConfigError
from lmzoo.nn.transformer import Transformer
from lmzoo.train.corpus import TokenWindows
from lmzoo.train.data import IGNORE
from lmzoo.train.glm import GLM10B_MIX, GLM130B_MIX, BlankSampler, GLMObjective, GLMTokens, glm_batches, glm_text_len, glm_tokens

MASK, GMASK, SMASK, SOP, EOP, EOS, DOT = 90, 91, 92, 93, 94, 2, 7
TOKENS = GLMTokens(mask=MASK, gmask=GMASK, sop=SOP, eop=EOP, smask=SMASK, doc_end=EOS, pad=EOP)


def tiny_glm(vocab: int = 96, **kw) -> Transformer:
    """ChatGLM-6B's architecture (catalog row), shrunk."""
    from lmzoo.catalog import get_config

    shape = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=4, head_dim=16, intermediate_size=256, vocab_size=vocab,
                 max_seq_len=256, deepnorm_alpha=2.0, bos_token_id=SOP, eos_token_id=(EOP,),
                 mask_token_ids=(GMASK, MASK, SMASK))
    cfg = get_config("ChatGLM-6B").replace(**(shape | kw))
    return Transformer(cfg)


# --- the reference: GLM's algorithm, written out again from the paper and blocklm_utils.py ------------

def ref_row(text: list[int], rng: random.Random, mix: dict, sentence_end: set):
    """(ids, targets, positions (2, L), allowed (L, L), part A length) for one row, drawing from rng in
    the documented order: task, then the task's draws, then Part B's shuffle."""
    n = len(text)
    u = rng.random()
    task = "mask" if u < mix["mask"] else "smask" if u < mix["mask"] + mix["smask"] else "gmask"
    spans = []
    if task == "smask":
        bounds, begin = [], 0
        for i in range(n):
            if text[i] == EOS:
                begin = i + 1
                continue
            if text[i] in sentence_end:
                if i + 1 > begin:
                    bounds.append((begin, i + 1))
                begin = i + 1
        if begin < n:
            bounds.append((begin, n))
        rng.shuffle(bounds)
        covered = 0
        for sent in bounds:
            spans.append(sent)
            covered += sent[1] - sent[0]
            if covered >= int(0.15 * n):
                break
        if not spans:
            task = "mask"
    if task == "mask":
        pmf = [3.0 ** k * math.exp(-3.0) / math.factorial(k) for k in range(1, 40)]
        masked_lengths = []
        while sum(masked_lengths) < max(1, int(0.15 * n)):
            masked_lengths += rng.choices(list(range(1, 40)), weights=pmf)
        rng.shuffle(masked_lengths)
        eos_at = [-1] + [i for i, t in enumerate(text) if t == EOS] + [n]
        documents = [(a + 1, b - a - 1) for a, b in zip(eos_at, eos_at[1:]) if b - a - 1 > 0]
        documents = sorted(documents, key=lambda d: d[1])
        k = 0
        for j, (offset, length) in enumerate(documents):
            last = j == len(documents) - 1
            count, total = 0, 0
            while k + count < len(masked_lengths):
                extra = masked_lengths[k + count] + total + (count if last else 0)
                if extra > (length if last else int(length * 0.15)):
                    break
                total += masked_lengths[k + count]
                count += 1
            if count:  # GLM's sample_spans
                lens = masked_lengths[k:k + count]
                m = length - sum(lens) - len(lens) + 1
                places = sorted(rng.randrange(m + 1) for _ in lens)
                for place, ln in zip(places, lens):
                    spans.append((offset + place, offset + place + ln))
                    offset += ln + 1
                k += count
    if task == "gmask":
        gen = rng.randint(int(0.5 * n), n - 2)
        spans = [(n - gen, n)]
    spans.sort()
    blocks = list(spans)
    rng.shuffle(blocks)
    # make_block_data: positions of the collapsed text, Part A, then Part B in the shuffled order
    keep = np.ones(n, dtype=np.int64)
    for s, e in spans:
        keep[s + 1:e] = 0
    pos = np.cumsum(keep) - 1
    mask_id = {"mask": MASK, "smask": SMASK, "gmask": GMASK}[task]
    a_ids, a_pos, last = [], [], 0
    for s, e in spans:
        a_ids += text[last:s] + [mask_id]
        a_pos += pos[last:s].tolist() + [int(pos[s])]
        last = e
    a_ids += text[last:]
    a_pos += pos[last:].tolist()
    b_ids, b_tgt, b_pos, b_blk = [], [], [], []
    for s, e in blocks:
        b_ids += [SOP] + text[s:e]
        b_tgt += text[s:e] + [EOP]
        b_pos += [int(pos[s])] * (e - s + 1)
        b_blk += list(range(1, e - s + 2))
    A, L = len(a_ids), len(a_ids) + len(b_ids)
    allowed = torch.tensor([[j < A or (i >= A and j <= i) for j in range(L)] for i in range(L)])
    return (a_ids + b_ids, [IGNORE] * A + b_tgt, torch.tensor([a_pos + b_pos, [0] * A + b_blk]), allowed, A,
            task, spans)


def corpus(n_docs: int = 40, seed: int = 0):
    """Token stream of documents ending in EOS, with sentence ends (DOT) inside."""
    g = random.Random(seed)
    toks, starts = [], []
    for _ in range(n_docs):
        starts.append(len(toks))
        doc = [g.randrange(10, 80) for _ in range(g.randrange(5, 60))]
        for i in range(len(doc)):
            if g.random() < 0.12:
                doc[i] = DOT
        toks += doc + [EOS]
    return np.asarray(toks, dtype=np.uint32), np.asarray(starts)


def test_batch_for_a_fixed_seed_matches_the_reference():
    toks, starts = corpus()
    windows = TokenWindows(toks, starts, 48)
    sampler = BlankSampler(tokens=TOKENS, mix=GLM10B_MIX, sentence_end={DOT})
    seen = Counter()
    for epoch in range(3):
        for j, b in enumerate(glm_batches(windows, sampler, rows=4, seed=5, epoch=epoch)):
            texts = next(x for i, x in enumerate(windows.batches(4, 5, epoch)) if i == j).ids.tolist()
            rng = random.Random(f"glm/5/{epoch}/{j}/0")
            for r, text in enumerate(texts):
                ids, tgt, pos, allowed, A, task, spans = ref_row(text, rng, GLM10B_MIX, {DOT})
                seen[task] += 1
                n = len(ids)
                assert b.ids[r, :n].tolist() == ids
                assert b.targets[r, :n].tolist() == tgt
                assert torch.equal(b.positions[r, :, :n], pos)
                assert torch.equal(b.allowed[r, :n, :n], allowed)
                assert b.tasks[r] == task and int(b.lengths[r]) == n
                # padding: no loss, sees only itself, seen by no real token
                assert (b.targets[r, n:] == IGNORE).all() and not b.allowed[r, :n, n:].any()
                assert torch.equal(b.allowed[r, n:, n:], torch.eye(b.ids.shape[1] - n, dtype=torch.bool))
                assert all(EOS not in text[s:e] for s, e in spans) or task == "gmask"
    assert set(seen) == {"mask", "smask", "gmask"}, seen
    again = next(iter(glm_batches(windows, sampler, rows=4, seed=5, epoch=0)))
    first = next(iter(glm_batches(windows, sampler, rows=4, seed=5, epoch=0)))
    assert torch.equal(again.ids, first.ids) and torch.equal(again.allowed, first.allowed)


# --- statistics over many rows -------------------------------------------------------------------------

def test_mask_ratio_and_span_lengths():
    sampler = BlankSampler(tokens=TOKENS, mix={"mask": 1.0})
    rng = random.Random(0)
    n, lengths, ratios, gaps = 400, [], [], []
    for _ in range(3000):
        row = sampler.sample(list(range(10, 10 + n)), rng)
        spans = row.spans
        lengths += [e - s for s, e in spans]
        ratios.append(sum(e - s for s, e in spans) / n)
        gaps += [s1 - e0 for (_, e0), (s1, _) in zip(spans, spans[1:])]
    # Poisson(3) restricted to 1..39: mean 3 / (1 - e^-3) = 3.157
    pmf = [3.0 ** k * math.exp(-3.0) / math.factorial(k) for k in range(1, 40)]
    mean = sum(k * p for k, p in zip(range(1, 40), pmf)) / sum(pmf)
    assert abs(np.mean(lengths) - mean) < 0.05, (np.mean(lengths), mean)
    freq = Counter(lengths)
    for k in range(1, 8):  # each length's share within 1 point of the pmf's
        assert abs(freq[k] / len(lengths) - pmf[k - 1] / sum(pmf)) < 0.01, k
    # drawn until they reach 15%: the overshoot is below one span (~3 tokens of 400)
    assert 0.15 <= np.mean(ratios) < 0.16 and min(ratios) >= 0.15
    assert min(gaps) >= 1  # at least one unmasked token between spans


def test_task_mix_and_suffix_lengths():
    sampler = BlankSampler(tokens=TOKENS, mix=GLM10B_MIX, sentence_end={DOT})
    rng = random.Random(1)
    text = [DOT if i % 9 == 8 else 20 + i % 50 for i in range(200)]
    tasks, suffix = Counter(), []
    for _ in range(6000):
        row = sampler.sample(text, rng)
        tasks[row.task] += 1
        if row.task == "gmask":
            (s, e), = row.spans
            assert e == len(text)
            suffix.append((e - s) / len(text))
        if row.task == "smask":  # whole sentences (the last may lack its end), >= 15% of the row
            assert all(text[e - 1] == DOT or e == len(text) for s, e in row.spans)
            assert sum(e - s for s, e in row.spans) >= 30
    for t, p in GLM10B_MIX.items():
        assert abs(tasks[t] / 6000 - p) < 0.02, tasks
    assert abs(np.mean(suffix) - 0.75) < 0.01 and min(suffix) >= 0.5 and max(suffix) <= 0.99
    rng = random.Random(2)
    tasks130 = Counter(BlankSampler(tokens=TOKENS).sample(text, rng).task for _ in range(4000))
    assert set(tasks130) == {"mask", "gmask"} and abs(tasks130["mask"] / 4000 - GLM130B_MIX["mask"]) < 0.025


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"summing to 1, got \{'mask': 0.5\}"):
        BlankSampler(tokens=TOKENS, mix={"mask": 0.5})
    with pytest.raises(ValueError, match=r"needs tokens.smask \(got None\)"):
        BlankSampler(tokens=GLMTokens(mask=1, gmask=2, sop=3, eop=4), mix=GLM10B_MIX, sentence_end={DOT})
    with pytest.raises(ValueError, match="at least 4 tokens, got 3"):
        BlankSampler(tokens=TOKENS).sample([5, 6, 7], random.Random(0))
    assert glm_text_len(256) == 196 and 196 + 2 * (int(0.15 * 196) + 1) <= 256


def test_tokens_from_the_config_or_a_clear_error():
    cfg = tiny_glm().config
    t = glm_tokens(cfg)
    assert (t.gmask, t.mask, t.smask, t.sop, t.eop) == (GMASK, MASK, SMASK, SOP, EOP)
    class Tok:  # GLM's HF tokenizers name <sop> / <eop> <|startofpiece|> / <|endofpiece|>
        names = {"[MASK]": 80, "[gMASK]": 81, "[sMASK]": 82, "<|startofpiece|>": 83, "<|endofpiece|>": 84}
        eos_token_ids = [5]

        def token_to_id(self, name):
            return self.names.get(name)

    t = glm_tokens(cfg, Tok())  # the tokenizer's names win over the config
    assert (t.mask, t.gmask, t.smask, t.sop, t.eop, t.doc_end) == (80, 81, 82, 83, 84, 5)
    with pytest.raises(ConfigError, match=r"needs the tokens \['\[MASK\]', '\[gMASK\]', '<sop>', '<eop>'\]"):
        glm_tokens(ModelConfig(name="plain", vocab_size=96, n_layer=1, n_embd=16, n_head=2, intermediate_size=32))


# --- the loss --------------------------------------------------------------------------------------------

def test_loss_and_gradients_match_autograd_on_part_b_only():
    torch.manual_seed(0)
    model = tiny_glm()
    with torch.no_grad():  # away from the trivial init (unit norms, zero biases)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    toks, starts = corpus(seed=3)
    sampler = BlankSampler(tokens=TOKENS, mix=GLM10B_MIX, sentence_end={DOT})
    b = next(iter(glm_batches(TokenWindows(toks, starts, 40), sampler, rows=3, seed=0, epoch=0)))
    obj = GLMObjective(loss_chunk=7)
    total, _ = obj.loss(model, b)
    total.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(b.ids, positions=b.positions, allowed=b.allowed)
    part_b = b.targets != IGNORE
    assert obj.units(b) == int(part_b.sum()) and not part_b[:, :1].any()
    for r in range(3):  # the targets are Part B's only: nothing before each row's first <sop>
        first_sop = b.ids[r].tolist().index(SOP)
        assert not part_b[r, :first_sop].any() and part_b[r, first_sop:int(b.lengths[r])].all()
    want = F.cross_entropy(logits[part_b], b.targets[part_b], reduction="sum")
    want.backward()
    assert torch.allclose(total, want, rtol=1e-5, atol=1e-4)
    for n, p in model.named_parameters():
        assert torch.allclose(ours[n], p.grad, rtol=1e-4, atol=1e-5), n


def test_objective_refuses_a_model_without_2d_positions():
    from lmzoo.catalog import get_config

    model = Transformer(get_config("Qwen2.5-0.5B").replace(n_layer=1, n_embd=32, n_head=2, n_kv_head=1,
                                                           head_dim=16, intermediate_size=64, vocab_size=96))
    toks, starts = corpus()
    b = next(iter(glm_batches(TokenWindows(toks, starts, 40), BlankSampler(tokens=TOKENS), 2, 0, 0)))
    with pytest.raises(ValueError, match="position='rope'"):
        GLMObjective().loss(model, b)


# --- a tiny GLM learns to fill blanks in real text --------------------------------------------------------

def python_docs(vocab_words: int = 1500):
    """Python's own documentation (the stdlib's pydoc_data.topics: the language reference's topics, as
    English text), as word-level documents; every tenth topic held out. Returns train and held-out
    token streams (documents ending in EOS), the document starts, and the vocabulary size."""
    from pydoc_data.topics import topics

    docs = {"train": [], "eval": []}
    for i, key in enumerate(sorted(topics)):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = [ln for ln in para.splitlines() if re.search(r"[a-zA-Z0-9]", ln)]  # no rst underlines
            words = re.findall(r"[a-z0-9_]+|[^\w\s]", " ".join(lines).lower())
            if len(words) >= 8:
                docs["eval" if i % 10 == 0 else "train"].append(words)
    counts = Counter(w for d in docs["train"] for w in d)
    vocab = {w: j + 2 for j, (w, _) in enumerate(counts.most_common(vocab_words))}  # 0 unknown, 1 EOS
    out = {}
    for split, ds in docs.items():
        toks, starts = [], []
        for d in ds:
            starts.append(len(toks))
            toks += [vocab.get(w, 0) for w in d] + [1]
        out[split] = (np.asarray(toks, dtype=np.uint32), np.asarray(starts))
    return out, vocab_words + 2


@torch.no_grad()
def blank_scores(model, windows, sampler, n_batches: int, unigram: torch.Tensor, n_words: int):
    """Teacher-forced per-word NLL and top-1 accuracy on the blanked words (Part B's targets but <eop>),
    the model's (over the words only: ids below n_words) and the unigram guess's."""
    model.eval()
    nll = acc = u_nll = u_acc = n = 0.0
    for i, b in enumerate(glm_batches(windows, sampler, rows=16, seed=123, epoch=0)):
        if i == n_batches:
            break
        logits = model(b.ids, positions=b.positions, allowed=b.allowed)
        keep = (b.targets != IGNORE) & (b.targets < n_words)
        y = b.targets[keep]
        logp = logits[keep][:, :n_words].float().log_softmax(-1)
        nll += float(-logp.gather(1, y[:, None]).sum())
        acc += float((logp.argmax(-1) == y).sum())
        u_nll += float(-unigram.log()[y].sum())
        u_acc += float((y == unigram.argmax()).sum())
        n += len(y)
    return nll / n, acc / n, u_nll / n, u_acc / n


@pytest.mark.slow
def test_tiny_glm_fills_held_out_blanks_better_than_unigram(tmp_path):
    """A 2-layer ChatGLM-6B-shaped model, trained from scratch with GLM-130B's task mix on the shared
    Trainer for 300 steps (~20 s on 2 idle CPU cores), fills [MASK] blanks of topics it never saw
    clearly better than the unigram guess (measured: NLL 4.31 vs 5.16 nats/word, top-1 21% vs 9%)."""
    import time

    from lmzoo.train.loop import TrainConfig, Trainer
    from lmzoo.train.pretrain import init_weights

    data, words = python_docs()
    V = words + 8
    tokens = GLMTokens(mask=V - 6, gmask=V - 5, smask=V - 4, sop=V - 3, eop=V - 2, doc_end=1, pad=V - 2)
    torch.manual_seed(0)
    model = tiny_glm(vocab=V, n_embd=128, n_head=4, head_dim=32, intermediate_size=512, max_seq_len=128,
                     bos_token_id=tokens.sop, eos_token_id=(tokens.eop,),
                     mask_token_ids=(tokens.gmask, tokens.mask, tokens.smask))
    # std 0.1, not 0.02: the DeepNorm-style residual re-normalises the stream to alpha * sqrt(d) every
    # layer, so sublayers started at 0.02 hardly move it and a tiny model learns ~10x slower (GLM-130B
    # starts from a Xavier-scaled init, ~0.1 at this width)
    init_weights(model, std=0.1)
    text_len = glm_text_len(96)
    train = TokenWindows(*data["train"], text_len)
    held_out = TokenWindows(*data["eval"], text_len)
    sampler = BlankSampler(tokens=tokens)  # GLM-130B's mix: 30% [MASK] spans, 70% [gMASK] suffixes
    cfg = TrainConfig(lr=5e-3, warmup_steps=30, max_steps=300, batch_size=16, seq_len=96, weight_decay=0.0,
                      log_every=100, seed=0, autocast_bf16=False)
    t0 = time.perf_counter()
    trainer = Trainer(model, cfg, train, out_dir=tmp_path / "run", objective=GLMObjective(),
                      make_batches=lambda d, epoch, seed: glm_batches(d, sampler, cfg.batch_size, seed, epoch),
                      batches_per_epoch=len(train) // cfg.batch_size, progress=False)
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    counts = np.bincount(data["train"][0].astype(np.int64), minlength=words)[:words].astype(np.float64) + 1.0
    unigram = torch.tensor(counts / counts.sum())
    fill = BlankSampler(tokens=tokens, mix={"mask": 1.0})  # short [MASK] spans of held-out topics
    nll, acc, u_nll, u_acc = blank_scores(model, held_out, fill, 20, unigram, words)
    print(f"\n{len(train.tokens):,} training words, {result['step']} steps in {seconds:.0f} s, last loss "
          f"{result['loss']:.3f}; held-out blanks: NLL {nll:.3f} vs unigram {u_nll:.3f} nats/word, "
          f"top-1 {acc:.1%} vs unigram {u_acc:.1%}")
    assert nll < u_nll - 0.5 and acc > 1.5 * u_acc


def test_glm_training_resumes_exactly(tmp_path):
    """The blanks are a function of (seed, epoch, batch): a run stopped and resumed ends with bitwise the
    weights of an uninterrupted one, on the shared Trainer."""
    from lmzoo.train.loop import TrainConfig, Trainer, trainable_state

    toks, starts = corpus(seed=4)
    windows = TokenWindows(toks, starts, 40)
    sampler = BlankSampler(tokens=TOKENS, mix=GLM10B_MIX, sentence_end={DOT})
    cfg = TrainConfig(lr=1e-3, max_steps=6, batch_size=2, seq_len=64, log_every=1, seed=3, autocast_bf16=False)

    def trainer(out, stop_after=None, resume=False):
        torch.manual_seed(0)
        model = tiny_glm()
        box = {}

        def make(d, epoch, seed):
            for b in glm_batches(d, sampler, cfg.batch_size, seed, epoch):
                if stop_after is not None and box["t"].micro + 1 >= stop_after:
                    box["t"]._stop = True  # as SIGTERM does: finish this step, checkpoint, stop
                yield b

        t = Trainer(model, cfg, windows, out_dir=tmp_path / out, objective=GLMObjective(), make_batches=make,
                    batches_per_epoch=len(windows) // 2, resume=resume, progress=False)
        box["t"] = t
        return t

    whole = trainer("whole")
    whole.fit()
    part = trainer("part", stop_after=3)
    assert part.fit()["stopped"] and part.step == 3
    rest = trainer("part", resume=True)
    assert rest.step == 3 and rest.fit()["finished"]
    a, b = trainable_state(whole.model), trainable_state(rest.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
