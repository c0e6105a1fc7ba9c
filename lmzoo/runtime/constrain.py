"""Constrained decoding: output that follows a JSON schema, a regex or a grammar by construction.

At every step the request's grammar says which tokens may come next; the others get -inf before
sampling, so the text is valid while it is being written (not validated after):

    logits (1, V) --mask: tokens the grammar cannot continue with -> -inf--> sample --> token
         ^                                                                              |
         +-------------------- matcher.consume(token): the grammar's state moves on ----+

The grammar engine is llguidance (Microsoft's; the one llama.cpp, vLLM and SGLang use): it compiles
JSON Schema (draft 2020-12, most keywords), regexes and Lark grammars into a lexer + Earley parser
over the tokenizer's byte strings and computes a step's mask in tens of microseconds, so it adds no
noticeable time per token. A grammar that has nothing left to write (a JSON object closed) allows
only end-of-turn tokens; `Constraint.done` says so and the engine ends the request there.

    g = json_schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}}})
    Request(..., grammar=g)            # the engine builds one Constraint per request
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import torch

from lmzoo.errors import GenerationError

# JSON written the way models saw it in training (json.dumps' separators), and no free whitespace:
# with flexible whitespace small models often loop on newlines inside an object forever
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llg():
    try:
        import llguidance
    except ImportError:  # a declared dependency; only a broken install lacks it
        raise GenerationError("constrained output needs the llguidance package (pip install llguidance)") from None
    return llguidance


def json_schema_grammar(schema: dict[str, Any] | bool) -> str:
    """The grammar of JSON documents valid under `schema` (True: any JSON value)."""
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise GenerationError(f"a JSON schema must be an object, got {type(schema).__name__}")
    return _llg().LLMatcher.grammar_from_json_schema(schema, defaults=dict(JSON_STYLE))


def regex_grammar(pattern: str) -> str:
    return _llg().LLMatcher.grammar_from_regex(pattern)


def lark_grammar(lark: str) -> str:
    """A Lark grammar (llguidance's dialect: `%json {schema}` embeds a JSON schema as a rule)."""
    return _llg().LLMatcher.grammar_from_lark(lark)


def lark_literal(guide_tok, text: str) -> str:
    """`text` as a Lark terminal. A text that is one special token of the tokenizer (Qwen's
    `<tool_call>`) must be written as that token (`<[id]>`): the model emits the token, whose bytes
    are not the text's."""
    ids = guide_tok.tokenize_str(text, parse_special=True)
    if len(ids) == 1 and guide_tok.is_special_token(ids[0]):
        return f"<[{ids[0]}]>"
    return json.dumps(text)


def json_lark(schema: dict[str, Any]) -> str:
    """`schema` as a Lark rule body, for grammars that put JSON between fixed text."""
    return "%json " + json.dumps({"x-guidance": dict(JSON_STYLE), **schema})


def check_grammar(grammar: str) -> None:
    """Raise GenerationError naming the problem if `grammar` does not compile."""
    error = _llg().LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise GenerationError(f"the output constraint is invalid: {error}")


# the llguidance view of a tokenizer (every token's bytes) takes ~0.5 s to build: once per tokenizer
_GUIDE_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def guide_tokenizer(tokenizer, vocab_size: int, stop_ids) -> Any:
    """llguidance's tokenizer for lmzoo's `tokenizer`: `vocab_size` rows of logits (the model's, which
    may be padded past the tokenizer's), `stop_ids` the tokens that end a finished output."""
    key = (vocab_size, tuple(sorted(stop_ids)))
    per_tok = _GUIDE_TOKENIZERS.setdefault(tokenizer, {})
    if key not in per_tok:
        llg = _llg()
        if not stop_ids:
            raise GenerationError("constrained output needs an end-of-turn token to finish with; this model has none")
        backend = tokenizer._tok
        if backend is not None:  # a `tokenizers` pipeline: llguidance reads its JSON directly
            source = backend.to_str()
        else:  # SentencePiece: hand over each piece's bytes
            source = llg.TokenizerWrapper(_SentencePieceView(tokenizer, stop_ids))
        per_tok[key] = llg.LLTokenizer(source, n_vocab=vocab_size, eos_token=sorted(stop_ids))
    return per_tok[key]


class _SentencePieceView:
    """What llguidance's TokenizerWrapper reads: token bytes by id, special ids, and encode(str)."""

    def __init__(self, tokenizer, stop_ids) -> None:
        sp = tokenizer._sp
        self.tokens = []
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):  # <0xAB>
                self.tokens.append(bytes([int(piece[3:5], 16)]))
            elif sp.is_control(i) or sp.is_unknown(i):
                self.tokens.append(piece.encode())
            else:
                self.tokens.append(piece.replace("\u2581", " ").encode())
        self.special_token_ids = sorted(tokenizer._special_ids)
        self.eos_token_id = sorted(stop_ids)[0]
        self.bos_token_id = tokenizer.bos_token_id
        self._tok = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)


class Constraint:
    """One request's grammar state. `mask_(logits)` before sampling, `consume(token)` after."""

    def __init__(self, grammar: str, guide_tok) -> None:
        llg = _llg()
        self._matcher = llg.LLMatcher(guide_tok, grammar, log_level=0)
        if self._matcher.is_error():
            raise GenerationError(f"the output constraint is invalid: {self._matcher.get_error()}")
        V = guide_tok.vocab_size
        self._words = torch.empty((V + 31) // 32, dtype=torch.int32)  # one bit per token
        self._bit = torch.arange(32, dtype=torch.int32)
        self.vocab_size = V

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens the grammar can continue with now."""
        self._matcher.unsafe_compute_mask_ptr(self._words.data_ptr(), self._words.numel() * 4)
        bits = (self._words[:, None] >> self._bit) & 1  # (V/32, 32): bit j of word w is token 32 w + j
        return bits.reshape(-1)[: self.vocab_size].bool()

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (1, V): disallowed tokens -> -inf, in place; returns logits."""
        V = self.vocab_size
        if logits.shape[-1] < V:
            raise GenerationError(f"the constraint was built for {V} logits, got {logits.shape[-1]}")
        logits[..., V:] = float("-inf")  # rows of a head padded past the tokenizer: never valid text
        logits[..., :V].masked_fill_(~self.allowed().to(logits.device), float("-inf"))
        return logits

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            raise GenerationError(f"token {token} breaks the output constraint: {self._matcher.get_error()}")

    @property
    def done(self) -> bool:
        """Nothing more can be written (only end-of-turn is allowed)."""
        return self._matcher.is_stopped()
