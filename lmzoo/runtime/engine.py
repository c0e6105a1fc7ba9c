"""The engine: requests in, events out, with continuous batching.

Everything that generates text (lmzoo.generate / stream_generate, the CLI, benchmarks, the server)
is a thin layer over `Engine`:

    engine = Engine(model, tokenizer, max_running=8)
    engine.submit(Request(prompt=ids, max_tokens=64, sampling=SamplingParams(temperature=0.7, seed=1)))
    while engine.has_work:
        for ev in engine.step():            # Event(request_id, token, text, finish_reason, logprob, ...)
            ...

One `step()`:
    1. cancelled requests leave; waiting ones take free cache rows (up to max_running)
    2. decode: every running request whose prompt is in the cache feeds its last token, all in one
       forward over their rows (each row at its own position: runtime.cache)
    3. prefill: what is left of the per-step token budget goes to prompts, in arrival order, in chunks
       of at most `prefill_chunk` tokens, so a long new prompt never stalls the running streams
    4. each row that produced logits samples with its own parameters and seed; text deltas are
       UTF-8 safe (a character split across tokens waits for its last byte) and stop strings are
       held back only while they may still begin (runtime.stop); a finished row frees its slot at once

A request's greedy output is the same token for token whether it runs alone or with others (its
row's attention sees only its own slots, and each row's products are computed independently); a
seeded sampled request draws from its own generator, so it gives the same text alone or batched.

prompt_cache=True (`lmzoo serve`, `lmzoo chat`) keeps what a finished request left in its cache row
and starts a new request on the free row whose tokens share the longest prefix with its prompt: only
the rest is prefilled (llama.cpp's server does the same with `cache_prompt`). A chat client resends
the whole conversation every turn, so a turn then costs its new message, not the history again. A
longer prefix in a running request's row (a system prompt every client sends) is copied from it.
The reused keys and values are the ones computed when those tokens were first seen (by a decode
step, or a prefill chunk of another length), so logits can differ from a fresh prefill's in the
last bits (greedy tokens only at a near-tie). Models whose cached keys depend on more than their
tokens' positions (dynamic NTK / LongRoPE, GLM's prefix-LM, Qwen v1's NTK alpha) never reuse rows.

Per-row state fixed at a prompt's prefill (GLM's prefix-LM context, Qwen v1's NTK alpha) needs the
prompt in one forward, so those prompts are not chunked. RoPE rules recomputed from the current
length across the batch (dynamic NTK, LongRoPE and its re-encode past the trained context) would
make a row depend on its neighbours, so such models run one request at a time (queued, not refused).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from lmzoo.dtypes import resolve_dtype
from lmzoo.errors import ContextLengthError, GenerationError
from lmzoo.runtime.cache import KVCache
from lmzoo.runtime.sampling import SamplingParams, apply_penalties, sample_next
from lmzoo.runtime.stop import StopMatcher

FINISH_REASONS = ("stop", "length", "eos", "cancelled")


@dataclass(kw_only=True)
class Request:
    prompt: list[int] | None = None  # token ids, or
    messages: list[dict] | None = None  # chat messages rendered with the tokenizer's template
    max_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] | tuple[str, ...] = ()
    stop_token_ids: list[int] | None = None  # None: the config's and the tokenizer's end-of-turn ids
    logprobs: bool = False
    top_logprobs: int = 0
    tools: list[dict] | None = None  # function definitions handed to the chat template (messages only)
    grammar: str | None = None  # the output must follow it (runtime.constrain: JSON schema, regex, Lark)
    id: str | None = None


@dataclass
class Event:
    """One step of one request. `token` is None only on a final event without a new token
    (cancelled, or no room for any). `text` is the new text (possibly "")."""

    request_id: str
    token: int | None
    text: str
    finish_reason: str | None = None  # None while running; then one of FINISH_REASONS
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values were already in the cache (prompt_cache)


class _Live:
    """A request inside the engine."""

    def __init__(self, req: Request, rid: str, prompt: list[int], stop_ids: set[int], max_tokens: int,
                 tokenizer, device) -> None:
        self.req, self.id, self.prompt, self.stop_ids, self.max_tokens = req, rid, prompt, stop_ids, max_tokens
        self.output: list[int] = []
        self.slot: int | None = None
        self.prefilled = 0
        self.cached = 0  # prompt tokens found in the cache row at admission
        self.padded = False  # prefilled left-padded beside others (batch_prefill): slots are not tokens
        self.pending: int | None = None  # sampled, not yet fed to the model
        self.cancelled = False
        self.decoder = tokenizer.stream_decoder() if tokenizer is not None else None
        self.matcher = StopMatcher(tuple(req.stop))
        s = req.sampling.seed
        self.generator = torch.Generator(device=device).manual_seed(s) if s is not None else None
        self.constraint = None

    def written(self) -> list[int]:
        """The tokens whose keys and values its cache row holds: the prompt as far as it is prefilled,
        then every output token but the last (sampled, not yet fed back)."""
        return self.prompt[:self.prefilled] + self.output[:-1]


def _shared(have: list[int], prompt: list[int]) -> int:
    """How many of the prompt's first tokens, all but its last, `have` starts with."""
    n = 0
    for a, b in zip(have, prompt[:-1]):
        if a != b:
            break
        n += 1
    return n


class Engine:
    def __init__(self, model, tokenizer=None, *, max_running: int = 8, max_len: int | None = None,
                 step_tokens: int = 512, prefill_chunk: int = 256, decode: str = "eager",
                 batch_prefill: bool = False, kv_dtype=None, prompt_cache: bool = False) -> None:
        cfg = model.config
        if decode not in ("eager", "static", "compiled"):
            raise GenerationError(f"decode must be 'eager', 'static' or 'compiled', got {decode!r}")
        if max_running < 1 or step_tokens < 1 or prefill_chunk < 1:
            raise GenerationError(f"max_running, step_tokens and prefill_chunk must be >= 1, got "
                                  f"{max_running}, {step_tokens}, {prefill_chunk}")
        self.model, self.tokenizer = model, tokenizer
        self.serial = cfg.rope_scaling.kind in ("dynamic", "longrope")  # see the module docstring
        self.whole_prompts = cfg.prefix_lm or cfg.rope_scaling.kind == "ntk_alpha"
        self.refill_at = cfg.rope_scaling.refill_at if cfg.position == "rope" else None
        self.max_running = 1 if self.serial else max_running
        self.step_tokens, self.prefill_chunk = step_tokens, prefill_chunk
        # several new prompts in one left-padded forward: much faster first tokens under load, but a
        # prompt's products then depend on its neighbours (more rows can switch a layer from the row
        # kernel to dequantise + GEMM), so its tokens may differ from alone in rare near-ties: opt-in
        self.batch_prefill = batch_prefill
        self.max_len = min(max_len or cfg.max_seq_len, cfg.max_seq_len)
        self.decode_fn = None
        if decode != "eager":
            from lmzoo.runtime.compiled import decode_step

            self.decode_fn = decode_step(model, compile=decode == "compiled")
        # kv_dtype: the cache's dtype (default: the activations'); "float16" under float32 activations
        # halves the cache's memory and what a decode step reads of it (keys and values rounded once,
        # as llama.cpp stores them by default)
        try:
            kv_dtype = resolve_dtype(kv_dtype)
        except ValueError as e:
            raise GenerationError(f"kv_dtype: {e}") from None
        self.cache = KVCache(model, self.max_running, self.max_len, dtype=kv_dtype, static=decode != "eager")
        self.device = self.cache.device
        eos = cfg.eos_token_id
        self.default_stop_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        if tokenizer is not None:
            self.default_stop_ids |= set(tokenizer.eos_token_ids)
        # prompt_cache: the tokens whose keys and values fill each free row's first slots (None: nothing
        # reusable), and when each row was last freed (a new prompt sharing no prefix takes the oldest)
        self.prompt_cache = prompt_cache and not (self.serial or self.whole_prompts or self.refill_at is not None)
        self.row_tokens: list[list[int] | None] = [None] * self.max_running
        self._freed = [0] * self.max_running
        self._frees = itertools.count(1)
        self.waiting: deque[_Live] = deque()
        self.running: dict[int, _Live] = {}  # slot -> request
        self._by_id: dict[str, _Live] = {}
        self._ids = itertools.count()

    # --- requests ---------------------------------------------------------------------------------
    def submit(self, req: Request) -> str:
        """Queue a request; returns its id. Bad input raises GenerationError / ContextLengthError."""
        if (req.prompt is None) == (req.messages is None):
            raise GenerationError("a request needs exactly one of prompt (token ids) or messages")
        if req.messages is not None:
            if self.tokenizer is None:
                raise GenerationError("chat messages need the engine's tokenizer")
            prompt = self.tokenizer.encode_chat(req.messages, **({"tools": req.tools} if req.tools else {}))
        else:
            if req.tools:
                raise GenerationError("tools are rendered by the chat template: give messages, not prompt ids")
            prompt = [int(t) for t in req.prompt]
        V = self.model.config.vocab_size
        if not prompt:
            raise GenerationError("the prompt is empty; give at least one token")
        if min(prompt) < 0 or max(prompt) >= V:
            raise GenerationError(f"prompt token ids must lie in [0, {V}); got values outside")
        if len(prompt) > self.max_len:
            ctx = self.model.config.max_seq_len
            where = f"the model's context of {ctx}" if len(prompt) > ctx else f"the engine's max_len of {self.max_len}"
            raise ContextLengthError(f"prompt of {len(prompt)} tokens is longer than {where} tokens")
        if not isinstance(req.max_tokens, int) or req.max_tokens < 0:
            raise GenerationError(f"max_tokens must be a non-negative integer, got {req.max_tokens!r}")
        if req.stop and self.tokenizer is None:
            raise GenerationError("stop strings need a tokenizer to decode the output")
        if not 0 <= req.top_logprobs <= 20:
            raise GenerationError(f"top_logprobs must be in [0, 20], got {req.top_logprobs}")
        rid = req.id or f"req-{next(self._ids)}"
        if rid in self._by_id:
            raise GenerationError(f"request id {rid!r} is already in the engine")
        stop_ids = self.default_stop_ids if req.stop_token_ids is None else set(req.stop_token_ids)
        live = _Live(req, rid, prompt, stop_ids, min(req.max_tokens, self.max_len - len(prompt)),
                     self.tokenizer, self.device)
        if req.grammar is not None:
            from lmzoo.runtime.constrain import Constraint

            live.constraint = Constraint(req.grammar, self.guide_tokenizer(stop_ids))
        self.waiting.append(live)
        self._by_id[rid] = live
        return rid

    def guide_tokenizer(self, stop_ids=None):
        """The grammar engine's view of the tokenizer (runtime.constrain), built once and cached."""
        from lmzoo.runtime.constrain import guide_tokenizer

        if self.tokenizer is None:
            raise GenerationError("constrained output needs the engine's tokenizer")
        return guide_tokenizer(self.tokenizer, self.model.config.vocab_size,
                               self.default_stop_ids if stop_ids is None else stop_ids)

    def cancel(self, request_id: str) -> None:
        """Stop a request; it stops consuming work at the next step (which reports it cancelled)."""
        if request_id in self._by_id:
            self._by_id[request_id].cancelled = True

    def cancel_all(self) -> None:
        for rid in list(self._by_id):
            self.cancel(rid)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def run(self, requests: Iterable[Request] = ()) -> Iterator[Event]:
        """Submit these and step until nothing is left, yielding every event."""
        for r in requests:
            self.submit(r)
        while self.has_work:
            yield from self.step()

    # --- one step ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Event]:
        events: list[Event] = []
        for live in [r for r in itertools.chain(self.waiting, self.running.values()) if r.cancelled]:
            events.append(self._finish(live, None, "", "cancelled"))
        self._admit(events)
        budget = self.step_tokens
        decoding = [r for r in self.running.values() if r.pending is not None]
        if decoding:
            refill = [r for r in decoding if self._needs_refill(r)]
            if refill:  # (serial models only: one row) re-encode everything with the new frequencies
                r = refill[0]
                self.cache.reset([r.slot])
                ids = torch.tensor([r.prompt + r.output], device=self.device)
                logits = self.model(ids, cache=self.cache, rows=[r.slot], last_only=True)[:, -1].float()
            else:
                logits = self._decode(decoding)
            budget -= len(decoding)
            for i, r in enumerate(decoding):
                r.pending = None
                events.extend(self._emit(r, logits[i:i + 1]))
        budget = max(budget, min(self.prefill_chunk, 32))  # prefill always moves
        pending = [r for r in self.running.values() if r.prefilled < len(r.prompt)]
        group = self._prefill_group(pending, budget) if self.batch_prefill else []
        if group:  # several whole new prompts in one left-padded forward (one pass over the weights)
            T = max(len(r.prompt) for r in group)
            ids = torch.zeros(len(group), T, dtype=torch.long, device=self.device)
            mask = torch.zeros(len(group), T, dtype=torch.long, device=self.device)
            for i, r in enumerate(group):
                ids[i, T - len(r.prompt):] = torch.tensor(r.prompt, device=self.device)
                mask[i, T - len(r.prompt):] = 1
            logits = self.model(ids, cache=self.cache, rows=[r.slot for r in group], attention_mask=mask,
                                last_only=True)[:, -1].float()
            for i, r in enumerate(group):
                r.prefilled, r.padded = len(r.prompt), len(r.prompt) < T
                budget -= len(r.prompt)
                events.extend(self._emit(r, logits[i:i + 1]))
            pending = [r for r in pending if r not in group]
        for r in pending:
            if budget <= 0:
                break
            left = len(r.prompt) - r.prefilled
            n = left if self.whole_prompts else min(left, budget, self.prefill_chunk)
            ids = torch.tensor([r.prompt[r.prefilled:r.prefilled + n]], device=self.device)
            logits = self.model(ids, cache=self.cache, rows=[r.slot], last_only=True)[:, -1].float()
            r.prefilled += n
            budget -= n
            if r.prefilled == len(r.prompt):
                events.extend(self._emit(r, logits))
        return events

    def _prefill_group(self, pending: list[_Live], budget: int) -> list[_Live]:
        """New prompts (nothing prefilled yet) that fit the step's budget whole, in arrival order, as
        long as left padding to the longest wastes at most half the forward; fewer than two: none."""
        group: list[_Live] = []
        for r in pending:
            n = len(r.prompt)
            if r.prefilled or n > min(budget, self.prefill_chunk):
                continue
            longest = max([n] + [len(g.prompt) for g in group])
            used = sum(len(g.prompt) for g in group) + n
            if used > budget or longest * (len(group) + 1) > 2 * used:
                continue
            group.append(r)
        return group if len(group) > 1 else []

    def _admit(self, events: list[Event]) -> None:
        free = [s for s in range(self.max_running) if s not in self.running]
        while self.waiting and free:
            live = self.waiting.popleft()
            if live.max_tokens == 0:  # no room for a single new token
                events.append(self._finish(live, None, "", "length"))
                continue
            slot, keep, src = self._pick_row(free, live.prompt)
            free.remove(slot)
            live.slot = slot
            self.row_tokens[slot] = None
            if src is not None:  # a running request's row holds this prompt's first `keep` tokens
                self.cache.copy_prefix(src, slot, keep)
            elif keep:  # this row's first `keep` slots hold them
                self.cache.rewind(slot, keep)
            else:
                self.cache.reset([slot])
            live.prefilled = live.cached = keep
            self.running[slot] = live

    def _pick_row(self, free: list[int], prompt: list[int]) -> tuple[int, int, int | None]:
        """(row, tokens to keep, row to copy them from or None) for a new prompt. With prompt_cache:
        the free row sharing the longest prefix with it, kept in place; or, when a running request's
        row shares a longer one (a system prompt many clients send), that prefix copied into the row
        freed longest ago; else that row, empty. Without: the first free row, empty. At least the
        prompt's last token is always prefilled again: its logits give the first new token."""
        if not self.prompt_cache:
            return free[0], 0, None
        oldest = min(free, key=lambda s: self._freed[s])
        best = (oldest, 0, None)
        for s in free:
            n = _shared(self.row_tokens[s] or (), prompt)
            if n > best[1]:
                best = (s, n, None)
        for s, r in self.running.items():
            if not r.padded:
                n = _shared(r.written(), prompt)
                if n > best[1]:
                    best = (oldest, n, s)
        return best

    def _needs_refill(self, r: _Live) -> bool:
        n = len(r.prompt) + len(r.output) - 1  # tokens in the cache before the pending one
        return self.refill_at is not None and n == self.refill_at and len(r.prompt) <= self.refill_at

    def _decode(self, decoding: list[_Live]) -> torch.Tensor:
        """One forward feeding every decoding row its pending token -> logits (len(decoding), vocab)."""
        if self.decode_fn is not None:  # fixed shapes: every cache row steps, idle ones on a dummy token
            ids = torch.zeros(self.max_running, 1, dtype=torch.long, device=self.device)
            for r in decoding:
                ids[r.slot, 0] = r.pending
            logits = self.decode_fn(ids, self.cache)
            return logits[torch.tensor([r.slot for r in decoding], device=self.device)]
        slots = [r.slot for r in decoding]
        rows = None if slots == list(range(self.max_running)) else slots
        ids = torch.tensor([[r.pending] for r in decoding], device=self.device)
        return self.model(ids, cache=self.cache, rows=rows)[:, -1].float()

    def _emit(self, r: _Live, logits: torch.Tensor) -> list[Event]:
        """Sample r's next token from logits (1, vocab) and report it."""
        p = r.req.sampling
        lp = top = None
        raw = logits
        if p.penalised:
            logits = apply_penalties(logits, p, r.prompt, r.output)
        if r.constraint is not None:  # tokens the grammar cannot continue with -> -inf
            logits = r.constraint.mask_(logits.clone())
        tok = int(sample_next(logits, p, r.generator))
        if r.constraint is not None and tok not in r.stop_ids:
            r.constraint.consume(tok)
        if r.req.logprobs or r.req.top_logprobs:
            logp = torch.log_softmax(raw, -1)[0]  # of the model's distribution (before sampling filters)
            lp = float(logp[tok])
            if r.req.top_logprobs:
                v, i = logp.topk(r.req.top_logprobs)
                top = list(zip(i.tolist(), v.tolist()))
        r.output.append(tok)
        if tok in r.stop_ids:
            text = r.matcher.feed(r.decoder.flush()) + r.matcher.flush() if r.decoder else ""
            return [self._finish(r, tok, text, "eos", lp, top)]
        text = r.matcher.feed(r.decoder.step(tok)) if r.decoder else ""
        if r.matcher.stopped:
            return [self._finish(r, tok, text, "stop", lp, top)]
        if r.constraint is not None and r.constraint.done:  # the grammar is complete: end of output
            return [self._finish(r, tok, text + r.matcher.feed(r.decoder.flush()) + r.matcher.flush(), "stop",
                                 lp, top)]
        if len(r.output) >= r.max_tokens:
            if r.decoder:
                text += r.matcher.feed(r.decoder.flush())
                text += "" if r.matcher.stopped else r.matcher.flush()
            return [self._finish(r, tok, text, "stop" if r.matcher.stopped else "length", lp, top)]
        r.pending = tok
        return [Event(r.id, tok, text, None, lp, top, len(r.prompt), len(r.output), r.cached)]

    def _finish(self, r: _Live, tok, text: str, reason: str, lp=None, top=None) -> Event:
        if r.slot is not None and self.running.get(r.slot) is r:
            del self.running[r.slot]
            if self.prompt_cache and not r.padded:
                self.row_tokens[r.slot] = r.written()
                self._freed[r.slot] = next(self._frees)
        elif r in self.waiting:
            self.waiting.remove(r)
        self._by_id.pop(r.id, None)
        return Event(r.id, tok, text, reason, lp, top, len(r.prompt), len(r.output), r.cached)
