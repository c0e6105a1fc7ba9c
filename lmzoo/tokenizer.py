"""Tokenizers and chat templates.

Sources, in the order `load_tokenizer` looks for them:
  * qwen.tiktoken               Qwen (v1): tiktoken ranks + Qwen's specials, as a `tokenizers` BPE
  * tokenizer.model (tiktoken)  Meta's Llama 3 / Llama 4 layout (no config; told apart by the rank
                                count) and GLM-4's (tokenizer_class ChatGLM4Tokenizer)
  * GPTPanguTokenizer           PanGu-alpha: jieba words, then SentencePiece (vocab.model)
  * ChatGLMTokenizer            ChatGLM-6B (ice_text.model: image-id offset, whitespace pieces) and
                                ChatGLM2/3 (tokenizer.model or its tokenizer.json: specials after the
                                pieces, [gMASK] sop first)
  * tokenizer.json              `tokenizers` (the Rust library HF's fast tokenizers are)
  * tokenizer.model             SentencePiece itself (LLaMA-1/2, Baichuan, Yi, Mistral v0.x ...); its
                                control pieces ([INST], </s>) are special tokens, as in HF
  * vocab.json + merges.txt     GPT-2's own files (GPT-2, GPT-J, OPT, CodeGen) + added_tokens.json
  * a .gguf file                the vocabulary llama.cpp embeds, rebuilt as a `tokenizers` model:
                                'gpt2' -> byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre`
                                names; 'llama' -> SentencePiece BPE ranked by the pieces' scores
`load_tokenizer(path, vocab_size=N)` refuses tokenizer files that write ids the model has no row for.
Special tokens, BOS/EOS and the chat template come from tokenizer_config.json /
special_tokens_map.json (or the GGUF metadata). Chat templates are rendered with jinja2 the way HF
renders them: a sandboxed environment, trim_blocks + lstrip_blocks, `raise_exception`, `tojson`.

Where HF's fast conversion of a SentencePiece model disagrees with SentencePiece (runs of spaces,
a leading space), we follow SentencePiece: it is what the model was trained on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from lmzoo.errors import TokenizerError

# Tokens that end an assistant turn in common chat formats; counted as EOS when the template uses them.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|user|>",
               "<|observation|>")

# llama.cpp `tokenizer.ggml.pre` -> the regex that splits text before byte-level BPE
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# more of llama.cpp's pre-tokenizers (llama-vocab.cpp), each a sequence of regexes applied in turn:
# every match and every gap between matches becomes a piece, then byte-level BPE runs on each piece
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_BLOOM_RE = r" ?[^(\s|.,!?…。，、।۔،)]+"
_DEEPSEEK_LLM = (
    r"[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
)
_DEEPSEEK_CODER = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}")
_DEEPSEEK3 = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
# (written with \p{Lu} etc. as in the models' tokenizer.json; llama.cpp spells the same classes out)
_TEKKEN_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
              r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_GPT4O_RE = (rf"[^\r\n\p{{L}}\p{{N}}]?[\p{{Lu}}\p{{Lt}}\p{{Lm}}\p{{Lo}}\p{{M}}]*[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]+{_CONTRACTION}?"
             rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{Lu}}\p{{Lt}}\p{{Lm}}\p{{Lo}}\p{{M}}]+[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]*{_CONTRACTION}?"
             r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SEED_CODER_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE = {
    "default": ("bytelevel", None), "gpt2": ("bytelevel", None), "gpt-2": ("bytelevel", None),
    # StarCoder-family vocabularies (SmolLM among them) split every digit first
    "smollm": ("digits", None), "starcoder": ("digits", None), "refact": ("digits", None),
    "llama-bpe": ("regex", _LLAMA3_RE), "llama3": ("regex", _LLAMA3_RE),
    "qwen2": ("regex", _QWEN2_RE), "deepseek-r1-qwen": ("regex", _QWEN2_RE),
    **{k: ("regex", _LLAMA3_RE) for k in ("llama-v3", "falcon3", "dbrx", "smaug-bpe", "chatglm-bpe", "glm4")},
    **{k: ("regex", _QWEN2_RE) for k in ("stablelm2", "megrez", "hunyuan")},
    **{k: ("regex", (r"\p{N}", _GPT2_RE)) for k in ("command-r", "codeshell", "exaone", "minerva-7b")},
    **{k: ("regex", _GPT2_RE) for k in ("phi-2", "mpt", "olmo", "jais", "trillion", "exaone4")},
    "falcon": ("regex", (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_RE, r"[0-9][0-9][0-9]")),
    **{k: ("regex", _BLOOM_RE) for k in ("bloom", "poro-chat", "gpt3-finnish")},
    "viking": ("regex", (_BLOOM_RE, r"\p{N}")),
    "deepseek-llm": ("regex", _DEEPSEEK_LLM), "deepseek-coder": ("regex", _DEEPSEEK_CODER),
    "deepseek-v3": ("regex", _DEEPSEEK3), "hunyuan-dense": ("regex", _DEEPSEEK3),
    "tekken": ("regex", _TEKKEN_RE), "gpt-4o": ("regex", _GPT4O_RE), "llama4": ("regex", _GPT4O_RE),
    "seed-coder": ("regex", _SEED_CODER_RE),
}


class Tokenizer:
    """Text <-> ids, special tokens, chat template. Build with `load_tokenizer`."""

    def __init__(self, *, backend=None, sp=None, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, unk_token: str | None = None, add_bos: bool = False,
                 chat_template: str | None = None, special_tokens: Iterable[str] = (),
                 appended: dict[str, int] | None = None, prefix: Iterable[str] = (),
                 special_pattern: str | None = None, end_of_turn: Iterable[str] = ()) -> None:
        """`appended`: special tokens numbered after the backend's vocabulary that the backend does
        not know (ChatGLM's [gMASK] sop ...); with them lmzoo splits the text on the specials itself
        and encodes every piece between them on its own. `prefix`: tokens put before the text instead
        of BOS (ChatGLM's [gMASK] sop). `special_pattern`: the regex that finds special tokens in
        text, when matching their spellings anywhere would be wrong."""
        if (backend is None) == (sp is None):
            raise ValueError("give exactly one of backend (tokenizers) or sp (sentencepiece)")
        self._tok, self._sp = backend, sp
        self._appended = dict(appended or {})
        self._appended_ids = {i: t for t, i in self._appended.items()}
        self.prefix = tuple(prefix)
        self.end_of_turn = tuple(end_of_turn)  # tokens that end a reply besides EOS (ChatGLM's <|user|>)
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.special_tokens = [t for t in special_tokens if t]
        self._special_ids = {i for i in (self.token_to_id(t) for t in self.special_tokens) if i is not None}
        # one alternation, longest first, so "<|im_end|>" wins over a shorter special it contains
        longest_first = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if longest_first else None
        if special_pattern:
            self._special_re = re.compile("(" + special_pattern + ")")

    # --- vocabulary -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        base = self._tok.get_vocab_size(with_added_tokens=True) if self._tok else self._sp.get_piece_size()
        return max([base - 1, *self._appended.values()]) + 1

    def check_vocab_size(self, model_vocab_size: int, what: str = "the model") -> None:
        """One-line TokenizerError when this tokenizer can write ids the model has no embedding for (a
        model's vocabulary may be larger than its tokenizer's: padded for speed, as ChatGLM's 65,024)."""
        if self.vocab_size > int(model_vocab_size):
            raise TokenizerError(f"the tokenizer has {self.vocab_size} tokens but {what} has a vocabulary of "
                                 f"{model_vocab_size}: the tokenizer files do not belong to this checkpoint")

    def token_to_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        if token in self._appended:
            return self._appended[token]
        if self._tok:
            return self._tok.token_to_id(token)
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def eos_token_ids(self) -> list[int]:
        """EOS plus the end-of-turn tokens the chat template emits (e.g. <|im_end|>)."""
        ids = [self.eos_token_id] if self.eos_token_id is not None else []
        for t in END_OF_TURN:
            i = self.token_to_id(t)
            if i is not None and i not in ids and (self.chat_template and t in self.chat_template):
                ids.append(i)
        for t in self.end_of_turn:
            i = self.token_to_id(t)
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    # --- encode / decode --------------------------------------------------------------------------
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        if self._appended:
            ids = self._split_encode(text)
        elif self._tok:
            ids = self._tok.encode(text, add_special_tokens=add_special_tokens and not self.prefix).ids
        else:
            ids = self._sp_encode(text)
        if add_special_tokens and self.prefix:
            pre = [self.token_to_id(t) for t in self.prefix]
            return ids if ids[: len(pre)] == pre else pre + ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            if self._sp is not None or not self._post_adds_bos():
                ids = [self.bos_token_id] + ids
        return ids

    def _post_adds_bos(self) -> bool:
        probe = self._tok.encode("a", add_special_tokens=True).ids
        return bool(probe) and probe[0] == self.bos_token_id

    def _sp_encode(self, text: str) -> list[int]:
        """SentencePiece with special tokens kept whole. As HF's LlamaTokenizer (legacy=False), text
        that follows a special token gets no dummy-prefix space: "</s> x" -> [</s>, ▁x]."""
        ids: list[int] = []
        # split with a capturing group: text at even indices, special tokens at odd ones
        parts = self._special_re.split(text) if self._special_re else [text]
        after_special = False
        for k, p in enumerate(parts):
            if k % 2:
                ids.append(self.token_to_id(p))
                after_special = True
            elif p:
                if after_special:
                    # encode behind the unk piece and drop it: suppresses the dummy prefix
                    unk = self._sp.id_to_piece(self._sp.unk_id())
                    ids.extend(self._sp.encode(unk + p)[len(self._sp.encode(unk)):])
                else:
                    ids.extend(self._sp.encode(p))
                after_special = False
        return ids

    def _split_encode(self, text: str) -> list[int]:
        """Special tokens found by `_special_re`, every piece between them encoded on its own (so each
        gets SentencePiece's dummy-prefix space, as ChatGLM's SPTokenizer encodes its pieces)."""
        ids: list[int] = []
        parts = self._special_re.split(text) if self._special_re else [text]
        for k, p in enumerate(parts):
            if k % 2:
                ids.append(self.token_to_id(p))
            elif p:
                ids.extend(self._tok.encode(p, add_special_tokens=False).ids if self._tok else self._sp.encode(p))
        return ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if self._appended:  # runs of backend ids decoded together, appended specials spelled out
            text, run = "", []
            for i in ids + [None]:
                if i is None or i in self._appended_ids:
                    if run:
                        text += self._decode_base(run, skip_special_tokens)
                        run = []
                    if i is not None and not skip_special_tokens:
                        text += self._appended_ids[i]
                else:
                    run.append(i)
            return text
        return self._decode_base(ids, skip_special_tokens)

    def _decode_base(self, ids: list[int], skip_special_tokens: bool) -> str:
        if self._tok:
            return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids and not self._sp.is_control(i)]
        return self._sp.decode(ids)

    def stream_decoder(self, *, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # --- chat -------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template; use a raw prompt instead")
        return render_chat_template(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens_map, **kwargs},
        )


    def encode_chat(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                    **kwargs: Any) -> list[int]:
        """The prompt ids of a conversation: the chat template rendered, then tokenised without adding
        special tokens (the template writes its own). Inference and training both go through this."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs),
                           add_special_tokens=False)

    def encode_chat_for_training(self, messages: list[dict[str, Any]], **kwargs: Any) -> tuple[list[int], list[bool]]:
        """Ids of a whole conversation and which of them the model should learn to write (True).

        Each assistant turn i is what generation would produce after the prompt of the turns before it:

            ids      = encode_chat(messages[:i], add_generation_prompt=True)   the prompt, as at inference
                     + encode(rendered(messages[:i+1])[len(rendered prompt):])  the reply, then
            learned  = the reply's tokens up to and including its first end-of-turn/EOS token (appended
                       when the template writes none), so the model learns to stop; what the template
                       puts after it (a newline) is context, not target.

        The turns must render as prefixes of each other and tokenise the same turn by turn (true of the
        templates shipped with the seed models); otherwise this raises TokenizerError naming the turn."""
        ids: list[int] = []
        learn: list[bool] = []
        eos = set(self.eos_token_ids)
        if not eos:
            raise TokenizerError("this tokenizer has no EOS token; a fine-tuned model could not learn to stop")
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            prompt_text = self.apply_chat_template(messages[:i], add_generation_prompt=True, **kwargs)
            full_text = self.apply_chat_template(messages[: i + 1], add_generation_prompt=False, **kwargs)
            if not full_text.startswith(prompt_text):
                raise TokenizerError(f"message {i}: the chat template does not render the conversation turn by "
                                     "turn (the prompt is not a prefix of the prompt plus the reply)")
            prompt = self.encode(prompt_text, add_special_tokens=False)
            if prompt[: len(ids)] != ids:
                raise TokenizerError(f"message {i}: the conversation so far does not tokenise the same as a prefix "
                                     "of the next prompt")
            reply = self.encode(full_text[len(prompt_text):], add_special_tokens=False)
            stop = next((j for j, t in enumerate(reply) if t in eos), None)
            if stop is None:
                reply, stop = reply + [self.eos_token_ids[0]], len(reply)
            learn += [False] * (len(prompt) - len(ids)) + [True] * (stop + 1) + [False] * (len(reply) - stop - 1)
            ids = prompt + reply
        if not ids:
            raise TokenizerError("the conversation has no assistant message to learn from")
        return ids, learn

    def gguf_vocabulary(self) -> dict[str, Any]:
        """The vocabulary as GGUF `tokenizer.*` keys (see the module function `gguf_vocabulary`)."""
        return gguf_vocabulary(self)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """What HF hands a chat template besides the messages: the named special tokens that are set
        (an unset one stays undefined in the template, which renders as "")."""
        named = {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                 "pad_token": self.pad_token}
        return {k: v for k, v in named.items() if v is not None}


class StreamDecoder:
    """Incremental decoding for streaming: feed ids one at a time, get the new text (possibly "")
    that is complete so far — multi-byte characters split across tokens are held back."""

    def __init__(self, tok: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tok, self._skip = tok, skip_special_tokens
        self._ids: list[int] = []
        self._emitted = ""

    def step(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        text = self._tok.decode(self._ids, skip_special_tokens=self._skip)
        if text.endswith("\ufffd"):  # an unfinished UTF-8 sequence: wait for the next token
            return ""
        new = text[len(self._emitted):] if text.startswith(self._emitted) else text
        self._emitted = text
        # keep the window short: re-decoding is only needed around the last few tokens
        if len(self._ids) > 16:
            self._ids, self._emitted = self._ids[-4:], self._tok.decode(self._ids[-4:], skip_special_tokens=self._skip)
        return new

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character decodes as U+FFFD), at the end."""
        text = self._tok.decode(self._ids, skip_special_tokens=self._skip)
        new = text[len(self._emitted):] if text.startswith(self._emitted) else ""
        self._emitted = text
        return new


def render_chat_template(template: str, messages: list[dict[str, Any]], **variables: Any) -> str:
    """Render an HF chat template as transformers does: a sandboxed jinja2 environment with
    trim_blocks + lstrip_blocks and loop controls, the `raise_exception` / `strftime_now` globals, a
    `tojson` that keeps non-ASCII text, `tools` / `documents` defined (None when not given), and a
    message's reasoning under every name templates read it by (reasoning_content, thinking)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    messages = [_alias_reasoning(m) for m in messages]
    try:
        return env.from_string(template).render(messages=messages, **variables)
    except (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        # a template bug or messages the template does not accept: one line, not a traceback
        msg = " ".join(str(e).split()) or type(e).__name__
        raise TokenizerError(f"chat template failed to render: {msg}") from None


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _alias_reasoning(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


# --- loading ------------------------------------------------------------------------------------
def _token_str(v: Any) -> str | None:
    if isinstance(v, dict):  # {"content": "<s>", ...} form
        return v.get("content")
    return v


def load_tokenizer(path, vocab_size: int | None = None) -> Tokenizer:
    """Tokenizer for an HF checkpoint directory or a .gguf file. With `vocab_size` (the model's), a
    tokenizer that writes ids past it is refused with a one-line TokenizerError."""
    tok = _load_tokenizer(path)
    if vocab_size is not None:
        tok.check_vocab_size(vocab_size)
    return tok


def _load_tokenizer(path) -> Tokenizer:
    p = Path(path).expanduser()
    if p.is_file():
        return _from_gguf(p)
    if not p.is_dir():
        raise TokenizerError(f"tokenizer path {str(p)!r} does not exist")
    cfg: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = p / name
        if f.exists():
            try:
                cfg.update(json.loads(f.read_text()))
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{f} is not valid JSON ({e})") from None
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (p / "chat_template.jinja").exists():
        template = (p / "chat_template.jinja").read_text()
    added = cfg.get("added_tokens_decoder", {})
    specials = [_token_str(v) for v in added.values() if isinstance(v, dict) and v.get("special")]
    specials += [_token_str(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    specials += [_token_str(t) for t in cfg.get("additional_special_tokens", [])]
    common = dict(bos_token=_token_str(cfg.get("bos_token")), eos_token=_token_str(cfg.get("eos_token")),
                  pad_token=_token_str(cfg.get("pad_token")), unk_token=_token_str(cfg.get("unk_token")),
                  chat_template=template)
    if (p / "qwen.tiktoken").exists() and not (p / "tokenizer.json").exists():
        return _from_qwen_tiktoken(p / "qwen.tiktoken", common)
    model_file = p / "tokenizer.model"
    if model_file.exists() and not (p / "tokenizer.json").exists() and _is_tiktoken(model_file):
        return _from_tiktoken_model(model_file, cfg, common)
    if cfg.get("tokenizer_class") == "GPTPanguTokenizer" and (p / "vocab.model").exists():
        return _pangu(p / "vocab.model", common, specials)
    if cfg.get("tokenizer_class") == "ChatGLMTokenizer" and (p / "ice_text.model").exists():
        return _chatglm6b(p / "ice_text.model", cfg, common)
    if cfg.get("tokenizer_class") == "ChatGLMTokenizer" and ((p / "tokenizer.json").exists() or model_file.exists()):
        return _chatglm(p, cfg, common)
    if (p / "tokenizer.json").exists():
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        try:
            backend = HFTokenizer.from_file(str(p / "tokenizer.json"))
        except Exception as e:
            raise TokenizerError(f"{p / 'tokenizer.json'} cannot be read ({e})") from None
        specials += [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
        fmt = CHAT_FORMATS.get(cfg.get("tokenizer_class"))
        if fmt and not common["chat_template"] and all(backend.token_to_id(t) is not None for t in fmt[1]):
            # a family whose chat format lives in its code, not in a template (Baichuan 2's build_chat_input)
            common = {**common, "chat_template": fmt[0]}
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fmt[1]])
            specials += list(fmt[1])
        if cfg.get("add_bos_token") is False and not cfg.get("add_eos_token"):
            # the config turns BOS off (Baichuan 2) while the file's post-processor would add it: the
            # config wins, as with the model's own (SentencePiece) tokenizer class
            if backend.encode("a").ids != backend.encode("a", add_special_tokens=False).ids:
                backend.post_processor = None
        return Tokenizer(backend=backend, add_bos=bool(cfg.get("add_bos_token", False)),
                         special_tokens=dict.fromkeys(s for s in specials if s), **common)
    if (p / "tokenizer.model").exists():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(p / "tokenizer.model"))
        except Exception as e:
            raise TokenizerError(f"{p / 'tokenizer.model'} is not a SentencePiece model ({e})") from None
        if common["bos_token"] is None and sp.bos_id() >= 0:
            common["bos_token"] = sp.id_to_piece(sp.bos_id())
        if common["unk_token"] is None and sp.unk_id() >= 0:
            common["unk_token"] = sp.id_to_piece(sp.unk_id())
        if common["eos_token"] is None and sp.eos_id() >= 0:
            common["eos_token"] = sp.id_to_piece(sp.eos_id())
        # control pieces ([INST], <|im_end|> in newer models) are special tokens, as HF makes them:
        # written in text they are the token, not its spelling
        specials += [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i)]
        return Tokenizer(sp=sp, add_bos=bool(cfg.get("add_bos_token", True)),
                         special_tokens=dict.fromkeys(s for s in specials if s), **common)
    if (p / "vocab.json").exists() and (p / "merges.txt").exists():
        return _from_vocab_merges(p, cfg, common, specials)
    raise TokenizerError(f"{p} has no tokenizer: expected tokenizer.json, tokenizer.model or vocab.json + merges.txt")


def _from_vocab_merges(p: Path, cfg: dict[str, Any], common: dict[str, Any], specials: list) -> Tokenizer:
    """GPT-2's own files (vocab.json + merges.txt, as GPT-2, GPT-J, OPT, CodeGen ship them): byte-level
    BPE with GPT-2's split; added_tokens.json (CodeGen's whitespace runs, GPT-J's extras) numbered after
    the vocabulary and matched whole in text."""
    from tokenizers import AddedToken

    try:
        vocab = json.loads((p / "vocab.json").read_text())
        added = json.loads((p / "added_tokens.json").read_text()) if (p / "added_tokens.json").exists() else {}
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{p}: vocab.json / added_tokens.json is not valid JSON ({e})") from None
    merges = []
    for n, line in enumerate((p / "merges.txt").read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#version") or not line.strip():
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerError(f"{p / 'merges.txt'} line {n} is not two tokens: {line[:60]!r}")
        merges.append(tuple(pair))
    backend = _byte_level_backend(vocab, merges, "bytelevel", None)
    extra = sorted((int(i), t) for t, i in added.items() if t not in vocab)
    if [i for i, _ in extra] != list(range(len(vocab), len(vocab) + len(extra))):
        raise TokenizerError(f"{p / 'added_tokens.json'}: the added tokens must be numbered {len(vocab)}.. right "
                             "after vocab.json's tokens")
    special = set(specials)
    for _, t in extra:  # one by one, in id order, so each gets its own id
        backend.add_tokens([AddedToken(t, special=t in special, normalized=False)])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(specials)
                                if t and t in vocab])
    return Tokenizer(backend=backend, add_bos=bool(cfg.get("add_bos_token", False)),
                     special_tokens=dict.fromkeys(s for s in specials if s), **common)


# Chat formats written in a family's code rather than a template, by tokenizer class: (template, the
# tokens it writes, which become special). Baichuan 2 (generation_utils.py build_chat_input): the system
# text, then per turn <reserved_106> (user_token_id 195) or <reserved_107> (assistant_token_id 196) and
# the content, each encoded on its own; <reserved_107> to prompt the reply.
BAICHUAN2_CHAT = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{% if not loop.first %}"
    "{{ raise_exception('Baichuan 2 takes a system message first only') }}{% endif %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<reserved_106>{{ m['content'] }}{% else %}<reserved_107>{{ m['content'] }}"
    "{% endif %}{% endfor %}{% if messages[-1]['role'] != 'assistant' %}<reserved_107>{% endif %}"
)
CHAT_FORMATS = {"BaichuanTokenizer": (BAICHUAN2_CHAT, ("<reserved_106>", "<reserved_107>"))}

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _from_gguf(path: Path) -> Tokenizer:
    """Rebuild the tokenizer llama.cpp would run from the vocabulary embedded in a GGUF file."""
    from tokenizers import AddedToken

    from lmzoo.checkpoints.gguf import gguf_metadata

    meta = gguf_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError(f"{path.name} embeds no vocabulary (tokenizer.ggml.tokens)")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if kind == "gpt2":
        backend = _gguf_byte_level_bpe(path, meta, tokens)
        add_bos_default = False
    elif kind == "llama":
        backend = _gguf_sentencepiece_bpe(path, meta, tokens, types)
        add_bos_default = True  # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says not to
    else:
        raise TokenizerError(f"{path.name}: GGUF tokenizer model {kind!r} is not supported; "
                             "supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece BPE)")
    # control tokens (<|im_end|>, </s>) are special: matched whole in text, dropped by skip_special_tokens;
    # user-defined ones (<think>) are matched whole but are ordinary text
    specials = [tokens[i] for i, t in enumerate(types) if t == CONTROL]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                        for i, t in enumerate(types) if t == USER_DEFINED])

    def tok(key: str) -> str | None:
        i = meta.get(key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    return Tokenizer(
        backend=backend, bos_token=tok("tokenizer.ggml.bos_token_id"), eos_token=tok("tokenizer.ggml.eos_token_id"),
        pad_token=tok("tokenizer.ggml.padding_token_id"), unk_token=tok("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)),
        chat_template=meta.get("tokenizer.chat_template"), special_tokens=specials,
    )


def _gguf_byte_level_bpe(path: Path, meta: dict[str, Any], tokens: list[str]):
    """GPT-2 style byte-level BPE (`tokenizer.ggml.model == "gpt2"`): tokens are spelled in GPT-2's
    byte alphabet, merges are listed, and `tokenizer.ggml.pre` names the regex that splits text first."""
    pre = meta.get("tokenizer.ggml.pre") or "default"
    if pre not in GGUF_PRE:
        raise TokenizerError(f"{path.name}: GGUF pre-tokenizer {pre!r} is not supported; supported: {sorted(GGUF_PRE)}")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    vocab = {t: i for i, t in enumerate(tokens)}
    return _byte_level_backend(vocab, merges, *GGUF_PRE[pre])


def _byte_level_backend(vocab: dict[str, int], merges: list[tuple[str, str]], how: str,
                        pattern: str | tuple[str, ...] | None, ignore_merges: bool = False):
    """A `tokenizers` byte-level BPE: tokens in GPT-2's byte alphabet, text split first by `how`
    ("bytelevel": GPT-2's own regex, "digits": single digits then GPT-2's, "regex": `pattern`, or
    each of several patterns in turn)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=ignore_merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=how != "regex")
    if how == "bytelevel":
        backend.pre_tokenizer = byte_level
    elif how == "digits":
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        patterns = (pattern,) if isinstance(pattern, str) else pattern
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [*(pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in patterns), byte_level])
    backend.decoder = decoders.ByteLevel()
    return backend


def _gguf_sentencepiece_bpe(path: Path, meta: dict[str, Any], tokens: list[str], types: list[int]):
    """SentencePiece BPE (`tokenizer.ggml.model == "llama"`: LLaMA-1/2, Mistral v0.1, Yi, ...).

    The file stores pieces and scores, no merges. SentencePiece's BPE (and llama.cpp's copy of it)
    repeatedly joins the adjacent pair whose joined piece has the highest score, so the merge list is
    every split (left, right) of every piece, ranked by the joined piece's score. Ranking by vocabulary
    id instead (as HF's .model converter does) goes wrong where scores and ids disagree: LLaMA's
    whitespace runs "▁▁", "▁▁▁▁" score -1e9 and must merge last. Spaces become "▁"; llama.cpp puts a
    "▁" before the text and after every special token (`add_space_prefix`); characters outside the
    vocabulary fall back to the byte pieces <0x00>..<0xFF>.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise TokenizerError(f"{path.name}: a 'llama' GGUF vocabulary needs tokenizer.ggml.scores for its {len(tokens)} tokens")
    vocab = {t: i for i, t in enumerate(tokens)}
    mergeable = {t for t, ty in zip(tokens, types) if ty in (NORMAL, USER_DEFINED)}
    ranked = []
    for piece in mergeable:
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                ranked.append((-float(scores[vocab[piece]]), vocab[piece], vocab[left], left, right))
    merges = [(left, right) for *_, left, right in sorted(ranked)]
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    byte_fallback = BYTE in types
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=byte_fallback, fuse_unk=True,
                                     unk_token=tokens[int(unk)] if unk is not None else None))
    steps = [normalizers.Replace(" ", "\u2581")]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))
    backend.normalizer = normalizers.Sequence(steps)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if meta.get("tokenizer.ggml.add_space_prefix", True) else []))
    return backend


# --- tiktoken vocabularies (Qwen v1's qwen.tiktoken) ------------------------------------------------
# A tiktoken file lists "base64(bytes) rank" per line: BPE whose merge priority is the rank of the
# merged token. It becomes the same `tokenizers` byte-level BPE as a tokenizer.json: tokens spelled in
# GPT-2's byte alphabet, and the merges recovered from the ranks (a token of rank r is the merge of the
# split whose halves are both tokens, lowest-ranked halves first; merges ordered by r).

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))
# Qwen v1 ships no chat template; its chat() builds ChatML with this default system prompt (make_context)
QWEN_CHATML = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _gpt2_byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value (printable Latin-1 bytes map to themselves, the
    rest to code points from 256 up, in byte order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def read_tiktoken(path: Path) -> dict[bytes, int]:
    import base64
    import binascii

    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerError(f"{path.name} line {n} is not 'base64-token rank': {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path.name}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def tiktoken_backend(ranks: dict[bytes, int], pattern: str):
    alphabet = _gpt2_byte_alphabet()

    def spell(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    merges = []
    for tok, rank in ranks.items():
        if len(tok) < 2:
            continue
        splits = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        splits.sort(key=lambda ab: (ranks[ab[0]], ranks[ab[1]]))
        merges += [(rank, spell(a), spell(b)) for a, b in splits]
    merges.sort(key=lambda m: m[0])
    vocab = {spell(t): r for t, r in ranks.items()}
    # tiktoken takes a piece that is itself a token whole, before any merging (ignore_merges)
    return _byte_level_backend(vocab, [(a, b) for _, a, b in merges], "regex", pattern, ignore_merges=True)


def _from_qwen_tiktoken(path: Path, common: dict[str, Any]) -> Tokenizer:
    """Qwen (first generation): qwen.tiktoken + specials numbered after the ranks (tokenization_qwen.py)."""
    from tokenizers import AddedToken, normalizers

    backend = tiktoken_backend(read_tiktoken(path), _QWEN2_RE)
    backend.normalizer = normalizers.NFC()  # QWenTokenizer.tokenize normalises to NFC first
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS])
    common = {**common, "eos_token": common.get("eos_token") or "<|endoftext|>",
              "pad_token": common.get("pad_token") or "<|endoftext|>",
              "chat_template": common.get("chat_template") or QWEN_CHATML}
    return Tokenizer(backend=backend, add_bos=False, special_tokens=QWEN_SPECIALS, **common)


# --- ChatGLM2 / ChatGLM3 (THUDM's tokenization_chatglm.py: SPTokenizer) -----------------------------
# SentencePiece pieces first, then these specials numbered from the piece count (ChatGLM2 has the first
# five; ChatGLM3 adds the role tokens). Every input starts with [gMASK] sop.
CHATGLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                    "<|observation|>")
# ChatGLM2's prompt format (its build_prompt), the [gMASK] sop prefix written by the template itself
CHATGLM2_PROMPT = (
    "[gMASK]sop{% set r = namespace(n=0) %}{% for m in messages %}"
    "{% if m['role'] == 'user' %}{% set r.n = r.n + 1 %}[Round {{ r.n }}]\n\n问：{{ m['content'] }}\n\n答："
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}\n\n"
    "{% else %}{{ raise_exception('ChatGLM2 has user and assistant turns only, not ' + m['role']) }}{% endif %}"
    "{% endfor %}"
)


def _chatglm(p: Path, cfg: dict[str, Any], common: dict[str, Any]) -> Tokenizer:
    """ChatGLM2/3 from tokenizer.model (as THUDM ship it) or a tokenizer.json converted from it.

    The specials are recognised in text by lmzoo, not by the backend, because "sop"/"eop" are also
    ordinary letters ("sophisticated", "people"): they are the token only right after a [*MASK]."""
    if (p / "tokenizer.json").exists():
        from tokenizers import Tokenizer as HFTokenizer

        backend, sp = HFTokenizer.from_file(str(p / "tokenizer.json")), None
        backend.post_processor = None  # the [gMASK] sop prefix replaces whatever the conversion added
        n = backend.get_vocab_size(with_added_tokens=True)
    else:
        import sentencepiece as spm

        backend, sp = None, spm.SentencePieceProcessor(model_file=str(p / "tokenizer.model"))
        n = sp.get_piece_size()
    declared = json.dumps(cfg.get("added_tokens_decoder", {})) + (common["chat_template"] or "")
    roles = any(t in declared for t in CHATGLM_SPECIALS[5:])
    names = CHATGLM_SPECIALS if roles else CHATGLM_SPECIALS[:5]
    appended = {t: n + k for k, t in enumerate(names)}
    for i, v in cfg.get("added_tokens_decoder", {}).items():
        t = _token_str(v)
        if t in appended and appended[t] != int(i):
            raise TokenizerError(f"{p / 'tokenizer_config.json'} puts {t} at id {i}, but ChatGLM numbers it "
                                 f"{appended[t]} (after the {n} SentencePiece pieces): not a ChatGLM2/3 tokenizer")
    # as SPTokenizer: only the appended specials are tokens in text (</s> written out is text)
    named = [t for t in (common["eos_token"], common["unk_token"], common["pad_token"], "<s>", "</s>") if t]
    plain = sorted((t for t in names if t not in ("sop", "eop")), key=len, reverse=True)
    pattern = "|".join([*map(re.escape, plain), r"(?<=MASK\])(?:sop|eop)"])
    common = {**common, "eos_token": common["eos_token"] or "</s>",
              "chat_template": common["chat_template"] or (None if roles else CHATGLM2_PROMPT)}
    return Tokenizer(backend=backend, sp=sp, add_bos=False, special_tokens=[*names, *named], appended=appended,
                     prefix=("[gMASK]", "sop"), special_pattern=pattern, end_of_turn=("<|user|>", "<|observation|>"),
                     **common)


# --- tiktoken tokenizer.model files (Meta's Llama 3, THUDM's GLM-4) -----------------------------------
# Meta's tokenizer.py: 256 specials after the ranks, these first, then reserved ones
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>")
LLAMA3_SPECIALS += tuple(f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_SPECIALS)))
# Meta's ChatFormat (llama_models/llama3/chat_format.py): header, content as given, <|eot_id|>
LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Meta's Llama 4 tokenizer.py: 2,048 specials after the 200,000 ranks, in these groups, then reserved ones
def _reserved(name: str, start: int, count: int) -> tuple[str, ...]:
    return tuple(f"<|{name}_reserved_special_token_{i}|>" for i in range(start, start + count))


LLAMA4_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>", *_reserved("text_post_train", 0, 6),
    "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>", *_reserved("text_post_train", 8, 61),
    "<|image_start|>", "<|image_end|>", *_reserved("vision", 0, 2), "<|tile_x_separator|>", "<|tile_y_separator|>",
    *_reserved("vision", 2, 4), "<|image|>", *_reserved("vision", 6, 1), "<|patch|>", *_reserved("vision", 7, 1041),
    *_reserved("reasoning", 0, 8), "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>",
)
LLAMA4_SPECIALS += tuple(f"<|reserved_special_token_{i}|>" for i in range(2048 - len(LLAMA4_SPECIALS)))
LLAMA4_CHAT = (  # llama_models/llama4/chat_format.py
    "{{ bos_token }}{% for m in messages %}<|header_start|>{{ 'ipython' if m['role'] == 'tool' else m['role'] }}"
    "<|header_end|>\n\n{{ m['content'] }}{{ '<|eom|>' if m['role'] == 'tool' else '<|eot|>' }}{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}"
)
# Meta's layouts (tokenizer.model + params.json, no tokenizer config), told apart by the number of ranks:
# specials, split regex, chat format, tokens that end a reply besides <|end_of_text|>
META_TIKTOKEN = {
    128000: (LLAMA3_SPECIALS, _LLAMA3_RE, LLAMA3_CHAT, ("<|eot_id|>", "<|eom_id|>")),
    200000: (LLAMA4_SPECIALS, _GPT4O_RE, LLAMA4_CHAT, ("<|eot|>", "<|eom|>")),
}
# tokenizer classes whose tokenizer.model is a tiktoken ranks file: (split regex, prefix tokens)
# and the tokens that end a reply besides EOS (generation_config's eos_token_id)
TIKTOKEN_CLASSES = {"ChatGLM4Tokenizer": (_LLAMA3_RE, ("[gMASK]", "<sop>"), ("<|user|>", "<|observation|>"))}


def _is_tiktoken(path: Path) -> bool:
    """A tiktoken ranks file ("base64 rank" lines) rather than a SentencePiece protobuf."""
    with open(path, "rb") as f:
        head = f.read(200).split(b"\n", 1)[0]
    return re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", head) is not None


def _from_tiktoken_model(path: Path, cfg: dict[str, Any], common: dict[str, Any]) -> Tokenizer:
    """A tiktoken tokenizer.model: GLM-4's (tokenizer_class ChatGLM4Tokenizer, specials from the
    config's added_tokens_decoder) or, with no tokenizer class, Meta's Llama 3 / Llama 4 layout."""
    from tokenizers import AddedToken

    ranks = read_tiktoken(path)
    cls = cfg.get("tokenizer_class")
    if cls in TIKTOKEN_CLASSES:
        pattern, prefix, end_of_turn = TIKTOKEN_CLASSES[cls]
        declared = {int(i): _token_str(v) for i, v in cfg.get("added_tokens_decoder", {}).items()}
    elif cls is None and len(ranks) in META_TIKTOKEN:  # Meta's layout (tokenizer.model + params.json)
        names, pattern, template, end_of_turn = META_TIKTOKEN[len(ranks)]
        prefix = ()
        declared = {len(ranks) + k: t for k, t in enumerate(names)}
        common = {**common, "bos_token": common["bos_token"] or "<|begin_of_text|>",
                  "eos_token": common["eos_token"] or "<|end_of_text|>",
                  "chat_template": common["chat_template"] or template}
    elif cls is None:
        raise TokenizerError(f"{path} is a tiktoken file of {len(ranks)} ranks and comes with no tokenizer config; "
                             f"Meta's layouts have {' or '.join(map(str, META_TIKTOKEN))} (Llama 3, Llama 4)")
    else:
        raise TokenizerError(f"{path} is a tiktoken file, but tokenizer class {cls!r} is not one lmzoo knows "
                             f"for it; known: {sorted(TIKTOKEN_CLASSES)} or none (Meta's Llama 3 layout)")
    if sorted(declared) != list(range(len(ranks), len(ranks) + len(declared))):
        raise TokenizerError(f"{path.name}: the special tokens must be numbered {len(ranks)}.. right after the "
                             f"{len(ranks)} ranks; the config numbers them {min(declared, default=None)}..")
    backend = tiktoken_backend(ranks, pattern)
    specials = [declared[i] for i in sorted(declared)]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return Tokenizer(backend=backend, add_bos=bool(cfg.get("add_bos_token", cls is None)),
                     special_tokens=specials, prefix=prefix, end_of_turn=end_of_turn, **common)


# --- ChatGLM-6B (v1: ice_text.model, THUDM's icetk-style SPTokenizer) --------------------------------
# Text ids follow `num_image_tokens` image ids (20,000 in the original code, 0 once the release pruned
# them); newlines are the piece <n>, tabs <|tab|>, runs of 2-80 spaces <|blank_n|>; the specials are
# pieces of the model; [gMASK] <sop> are appended after the text. Chat: modeling_chatglm.py's chat().
CHATGLM6B_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")
CHATGLM6B_PROMPT = (
    "{% set last = namespace(i=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}{% set last.i = loop.index0 %}"
    "{% endif %}{% endfor %}{% for m in messages %}"
    "{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('ChatGLM-6B has user and assistant turns only, not ' + m['role']) }}{% endif %}"
    "{% if loop.index0 < last.i %}{% if m['role'] == 'user' %}{{ '[Round ' ~ (loop.index0 // 2) ~ ']\\n问：' ~ "
    "m['content'] ~ '\\n答：' }}{% else %}{{ m['content'] ~ '\\n' }}{% endif %}"
    "{% elif loop.index0 == last.i %}{% if last.i > 0 %}{{ '[Round ' ~ (loop.index0 // 2) ~ ']\\n问：' ~ m['content'] ~ "
    "'\\n答：' }}{% else %}{{ m['content'] }}{% endif %}[gMASK]<sop>"
    "{% else %}{{ m['content'] }}<eop>{% endif %}{% endfor %}"
)


class IceTokenizer(Tokenizer):
    """ChatGLM-6B's tokenizer: SentencePiece ids shifted by the image-token count, whitespace spelled
    as pieces before encoding and restored after decoding, [gMASK] <sop> after the text."""

    MAX_BLANK = 80

    def __init__(self, sp, *, offset: int, **kw: Any) -> None:
        self._offset = offset
        super().__init__(sp=sp, **kw)

    @property
    def vocab_size(self) -> int:
        return self._offset + self._sp.get_piece_size()

    def token_to_id(self, token: str | None) -> int | None:
        i = super().token_to_id(token)
        return None if i is None else i + self._offset

    @classmethod
    def _spell_whitespace(cls, text: str) -> str:
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        return re.sub(" {2," + str(cls.MAX_BLANK) + "}", lambda m: f"<|blank_{len(m.group())}|>", text)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = []
        parts = self._special_re.split(text)  # specials whole; every piece between them has the dummy prefix
        for k, p in enumerate(parts):
            if k % 2:
                ids.append(self.token_to_id(p))
            elif p:
                ids += [i + self._offset for i in self._sp.encode(self._spell_whitespace(p))]
        if add_special_tokens:
            ids += [self.token_to_id("[gMASK]"), self.token_to_id("<sop>")]
        return ids

    def _decode_base(self, ids: list[int], skip_special_tokens: bool) -> str:
        ids = [i - self._offset for i in ids if i >= self._offset]
        if skip_special_tokens:
            ids = [i for i in ids if i + self._offset not in self._special_ids and not self._sp.is_control(i)]
        text = self._sp.decode(ids).replace("<n>", "\n").replace("<|tab|>", "\t")
        return re.sub(r"<\|blank_(\d+)\|>", lambda m: " " * int(m.group(1)), text)


def _chatglm6b(path: Path, cfg: dict[str, Any], common: dict[str, Any]) -> Tokenizer:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    missing = [t for t in ("<n>", "<|tab|>", *CHATGLM6B_SPECIALS) if sp.piece_to_id(t) == sp.unk_id()]
    if missing:
        raise TokenizerError(f"{path} lacks ChatGLM-6B's pieces {missing}: not ChatGLM-6B's ice_text.model")
    named = [_token_str(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token",
                                              "gmask_token")]
    specials = list(dict.fromkeys([*CHATGLM6B_SPECIALS, *(t for t in named if t)]))
    common = {**common, "bos_token": common["bos_token"] or "<sop>", "eos_token": common["eos_token"] or "<eop>",
              "chat_template": common["chat_template"] or CHATGLM6B_PROMPT}
    return IceTokenizer(sp, offset=int(cfg.get("num_image_tokens", 20000)), special_tokens=specials,
                        end_of_turn=("<eop>",), **common)


# --- PanGu-alpha (PCL's tokenization_jieba.py: jieba words, then SentencePiece) -----------------------
class JiebaTokenizer(Tokenizer):
    """PanGu-alpha's tokenizer: jieba cuts the text into words; in each word a space becomes U+2582 and a
    newline U+2583; the words are joined by spaces and encoded by SentencePiece (whose own spaces are
    dropped again when decoding). Special tokens ( <eot> ...) are kept whole; nothing is added."""

    _TO_PIECES = str.maketrans(" \n", "\u2582\u2583")

    def _sp_encode(self, text: str) -> list[int]:
        try:
            import jieba
        except ImportError:
            raise TokenizerError("PanGu-alpha's tokenizer cuts words with jieba: pip install jieba") from None
        ids: list[int] = []
        parts = self._special_re.split(text) if self._special_re else [text]
        for k, p in enumerate(parts):
            if k % 2:
                ids.append(self.token_to_id(p))
            elif p:
                ids += self._sp.encode(" ".join(w.translate(self._TO_PIECES) for w in jieba.cut(p, cut_all=False)))
        return ids

    def _decode_base(self, ids: list[int], skip_special_tokens: bool) -> str:
        return super()._decode_base(ids, skip_special_tokens).replace(" ", "").replace("\u2582", " ").replace("\u2583", "\n")


def _pangu(path: Path, common: dict[str, Any], specials: list) -> Tokenizer:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    common = {**common, "eos_token": common["eos_token"] or ("<eot>" if sp.piece_to_id("<eot>") != sp.unk_id() else None)}
    named = [t for t in (*specials, common["eos_token"]) if t and sp.piece_to_id(t) != sp.unk_id()]
    return JiebaTokenizer(sp=sp, add_bos=False, special_tokens=dict.fromkeys(named), **common)
# --- GGUF vocabularies out (lmzoo.checkpoints.gguf_save writes them) ------------------------------------

def gguf_vocabulary(tok: Tokenizer) -> dict[str, Any]:
    """The `tokenizer.*` GGUF keys llama.cpp reads for `tok`, the inverse of `_from_gguf`: a
    SentencePiece model -> `llama` (pieces, scores, token types); a byte-level BPE tokenizer.json ->
    `gpt2` (tokens, merges, and the `pre` name whose regexes split text as its pre-tokenizer does); a
    SentencePiece-style BPE tokenizer.json -> `llama` with scores from the merge order (an earlier
    merge scores higher, which is how SentencePiece and llama.cpp pick the pair to join)."""
    if tok._sp is not None:
        return _sentencepiece_meta(tok)
    return _tokenizers_meta(tok)


def _special_ids(tok, meta: dict[str, Any]) -> None:
    for key, token in (("bos", tok.bos_token), ("eos", tok.eos_token), ("unknown", tok.unk_token),
                       ("padding", tok.pad_token)):
        i = tok.token_to_id(token)
        if i is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = int(i)
    if tok.chat_template:
        meta["tokenizer.chat_template"] = tok.chat_template


def _sentencepiece_meta(tok) -> dict[str, Any]:
    sp = tok._sp
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        types.append(CONTROL if sp.is_control(i) else UNKNOWN if sp.is_unknown(i) else BYTE if sp.is_byte(i)
                     else UNUSED if sp.is_unused(i) else NORMAL)
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
            "tokenizer.ggml.scores": [float(sp.get_score(i)) for i in range(n)],
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.add_bos_token": bool(tok.add_bos),
            "tokenizer.ggml.add_eos_token": False}
    _special_ids(tok, meta)
    return meta


def _pre_signature(pre: dict | None) -> tuple:
    """A tokenizers pre_tokenizer (JSON) as what splits text: (kind, pattern) steps."""
    if not pre:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(s for p in pre["pretokenizers"] for s in _pre_signature(p))
    if kind == "Split":
        pat = pre.get("pattern", {})
        return (("split", _unescape(pat.get("Regex", pat.get("String")))),)
    if kind == "ByteLevel":
        return (("bytelevel", bool(pre.get("use_regex", True))),)
    if kind == "Digits":
        return (("digits", bool(pre.get("individual_digits"))),)
    return ((kind, json.dumps(pre, sort_keys=True)),)


_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", '"': '"', "'": "'"}


def _unescape(pattern: str | None) -> str | None:
    """One spelling for regexes written with or without escapes for \\r, \\n, \\t and quotes."""
    if pattern is None:
        return None
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), pattern)


def _gguf_pre_name(pre: dict | None) -> str:
    """The `tokenizer.ggml.pre` whose pre-tokenizer splits text as `pre` does (GGUF_PRE)."""
    want = _pre_signature(pre)
    for name, (how, pattern) in GGUF_PRE.items():
        probe = _byte_level_backend({"a": 0}, [], how, pattern)
        if _pre_signature(json.loads(probe.to_str()).get("pre_tokenizer")) == want:
            return name
    raise TokenizerError(f"the tokenizer's pre-tokenizer ({', '.join(str(s[0]) for s in want) or 'none'}) matches "
                         f"none llama.cpp names; supported: {', '.join(sorted(GGUF_PRE))}")


def _tokenizers_meta(tok) -> dict[str, Any]:
    j = json.loads(tok._tok.to_str())
    model = j.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(f"GGUF vocabularies are BPE; this tokenizer's model is {model.get('type')!r}")
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in j.get("added_tokens") or []}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for t, i in vocab.items():
        tokens[i] = t
    types = [UNUSED if tokens[i] == f"[PAD{i}]" else NORMAL for i in range(n)]
    for t in added.values():
        types[t["id"]] = CONTROL if t.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    byte_level = "ByteLevel" in json.dumps(j.get("decoder")) or "ByteLevel" in json.dumps(j.get("pre_tokenizer"))
    meta: dict[str, Any] = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
    if byte_level:
        meta |= {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _gguf_pre_name(j.get("pre_tokenizer")),
                 "tokenizer.ggml.merges": merges}
        add_bos = bool(tok.add_bos) or (tok.bos_token_id is not None and tok._post_adds_bos())
    else:  # SentencePiece BPE as tokenizer.json: scores from the merge ranks (earlier merge, higher score)
        rank = {}
        for r, m in enumerate(merges):
            rank.setdefault(m.replace(" ", ""), r)
        unk = tok.token_to_id(tok.unk_token)
        for i, t in enumerate(tokens):
            if types[i] == NORMAL and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
        if unk is not None:
            types[unk] = UNKNOWN
        meta |= {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                 "tokenizer.ggml.scores": [-float(rank.get(t, len(merges) + i)) for i, t in enumerate(tokens)],
                 "tokenizer.ggml.add_space_prefix": "Prepend" in json.dumps(j.get("normalizer"))
                 or any(f'"prepend_scheme": "{k}"' in json.dumps(j.get("pre_tokenizer")) for k in ("always", "first"))}
        add_bos = bool(tok.add_bos) or (tok.bos_token_id is not None and tok._post_adds_bos())
    meta["tokenizer.ggml.add_bos_token"] = add_bos
    meta["tokenizer.ggml.add_eos_token"] = False
    _special_ids(tok, meta)
    return meta
