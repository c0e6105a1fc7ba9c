"""Tool (function) calling: the OpenAI `tools` / `tool_choice` fields over a model's own format.

A model calls tools in the text format its chat template teaches it; the format is read off the
template (`detect_format`: the text with which the template teaches it), never off the model's name.
Two are shipped:

    hermes        Qwen2.5 / Qwen3, Hermes, many fine-tunes: calls between tags, anywhere in the reply
                  <tool_call>
                  {"name": "get_weather", "arguments": {"city": "Paris"}}
                  </tool_call>
    llama3_json   Llama 3.1 / 3.2 / 3.3: the reply *is* the call, a bare JSON object (after
                  <|python_tag|>, a special token the text does not show), ended by <|eom_id|> or
                  <|eot_id|>; several calls are joined by "; " (as vLLM's llama3_json parser reads them)
                  {"name": "get_weather", "parameters": {"city": "Paris"}}
                  Tool results go back as `tool` messages, which the template writes as `ipython` turns.

The template renders the `tools` list into the prompt; the reply is parsed back into OpenAI's
`tool_calls` (also while streaming: text before a call streams as content, a call is sent as one
delta once it is complete — its closing tag, or the end of its JSON object). `tool_choice`:

    "auto"      tools rendered, output free, calls parsed out of it
    "required"  output constrained to one call or more (runtime.constrain), each to a listed tool's
                name and its `parameters` schema
    {"type": "function", "function": {"name": N}}   constrained to calls of N
    "none"      tools not rendered, nothing parsed

A call whose body is not the JSON the format promises stays in the content as text (never lost).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from lmzoo.runtime.constrain import json_lark, lark_grammar, lark_literal


@dataclass(frozen=True)
class ToolFormat:
    name: str
    marker: str  # the text by which a chat template teaches this format
    begin: str  # opens a call (a line of its own); "" for a reply that is bare JSON calls
    end: str  # closes it (a line of its own)
    separator: str  # between two calls
    arguments_key: str  # the call object's key for the arguments ("arguments" / "parameters")

    @property
    def tagged(self) -> bool:
        return bool(self.begin)

    def parser(self) -> ToolCallParser | JsonCallParser:
        return ToolCallParser(self) if self.tagged else JsonCallParser(self)


HERMES = ToolFormat(name="hermes", marker="<tool_call>", begin="<tool_call>", end="</tool_call>", separator="\n",
                    arguments_key="arguments")
# Meta's templates (3.1, 3.2, 3.3) all teach it with this sentence
LLAMA3_JSON = ToolFormat(name="llama3_json", marker='"parameters": dictionary of argument name and its value',
                         begin="", end="", separator="; ", arguments_key="parameters")
FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON)}


def detect_format(chat_template: str | None) -> ToolFormat | None:
    """The format a chat template teaches (it writes the format's marker), or None."""
    if not chat_template:
        return None
    return next((f for f in FORMATS.values() if f.marker in chat_template), None)


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def call_grammar(fmt: ToolFormat, tools: list[dict[str, Any]], guide_tok, *, only: str | None = None,
                 parallel: bool = True) -> str:
    """The grammar of a reply that is tool calls only: one (or, with `parallel`, several) calls of
    the listed tools (or only of `only`), each body {"name": N, "arguments": <N's parameters>};
    `guide_tok` (runtime.constrain.guide_tokenizer) tells which tags are special tokens."""
    bodies = []
    for t in tools:
        f = t["function"]
        if only is not None and f["name"] != only:
            continue
        params = f.get("parameters") or {"type": "object"}
        bodies.append({"type": "object", "properties": {"name": {"const": f["name"]}, fmt.arguments_key: params},
                       "required": ["name", fmt.arguments_key], "additionalProperties": False})
    body = bodies[0] if len(bodies) == 1 else {"anyOf": bodies}
    more = f"({json.dumps(fmt.separator)} call)*" if parallel else ""
    if not fmt.tagged:
        return lark_grammar(f"start: call {more}\ncall: {json_lark(body)}\n")
    begin, end = lark_literal(guide_tok, fmt.begin), lark_literal(guide_tok, fmt.end)
    return lark_grammar(f"start: call {more}\ncall: {begin} \"\\n\" body \"\\n\" {end}\nbody: {json_lark(body)}\n")


class ToolCallParser:
    """Streaming: feed text deltas, get (content delta, finished calls). Text that may be the start
    of a call's opening tag is held back until it is known not to be."""

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt = fmt
        self._buf = ""
        self._in_call = False
        self.calls: list[dict[str, Any]] = []

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        f, content, new = self.fmt, [], []

        def outside(segment: str) -> None:  # text outside calls; whitespace between/after calls is layout
            if segment and not (self.calls or new) or segment.strip():
                content.append(segment)

        self._buf += text
        while True:
            if not self._in_call:
                i = self._buf.find(f.begin)
                if i < 0:  # emit all but a tail that could still become the opening tag
                    keep = next((k for k in range(min(len(f.begin) - 1, len(self._buf)), 0, -1)
                                 if f.begin.startswith(self._buf[-k:])), 0)
                    outside(self._buf[: len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep:]
                    break
                outside(self._buf[:i])
                self._buf, self._in_call = self._buf[i + len(f.begin):], True
            j = self._buf.find(f.end)
            if j < 0:
                break
            body, self._buf, self._in_call = self._buf[:j], self._buf[j + len(f.end):], False
            call = self._parse(body)
            if call is None:
                outside(f.begin + body + f.end)
            else:
                new.append({"index": len(self.calls) + len(new), **call})
        self.calls += new
        return "".join(content), new

    def flush(self) -> str:
        """What is left at the end (an unfinished call stays as text)."""
        rest = (self.fmt.begin if self._in_call else "") + self._buf
        self._buf, self._in_call = "", False
        return "" if self.calls and not rest.strip() else rest

    def _parse(self, body: str) -> dict[str, Any] | None:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            return None
        return call_of(self.fmt, obj)


def call_of(fmt: ToolFormat, obj: Any) -> dict[str, Any] | None:
    """An OpenAI tool call from a decoded call object, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(fmt.arguments_key, {})
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": obj["name"], "arguments": args}}


PYTHON_TAG = "<|python_tag|>"  # Llama's "a call follows"; decoded text normally skips it


class JsonCallParser:
    """Streaming, for formats whose reply is bare JSON calls (llama3_json). A reply whose first
    non-blank text is `{` (after an optional <|python_tag|>) is held back as calls, each sent once
    its object is complete; any other reply streams as content, and so does what follows the calls
    if it is not another call (or a JSON object that is not a call: nothing is lost)."""

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt = fmt
        self._buf = ""
        self._mode: str | None = None  # None: not decided yet; "text"; "calls"
        self.calls: list[dict[str, Any]] = []
        self._decoder = json.JSONDecoder()

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        self._buf += text
        if self._mode is None:
            start = _untag(self._buf)
            if not start or PYTHON_TAG.startswith(self._buf.lstrip()):
                return "", []  # still blank, or a tag half-way
            self._mode = "calls" if start.startswith("{") else "text"
        new: list[dict[str, Any]] = []
        sep = self.fmt.separator.strip()
        while self._mode == "calls":
            rest = _untag(self._buf)
            if self.calls or new:
                if not rest or sep.startswith(rest):
                    break  # blank or half a separator: wait
                if not rest.startswith(sep):
                    self._mode = "text"
                    break
                rest = _untag(rest[len(sep):])
                if not rest:
                    break
                if not rest.startswith("{"):
                    self._mode = "text"
                    break
            try:
                obj, end = self._decoder.raw_decode(rest)
            except json.JSONDecodeError:
                break  # not complete yet (or never: flush keeps it as text)
            call = call_of(self.fmt, obj)
            if call is None:
                self._mode = "text"
                break
            new.append({"index": len(self.calls) + len(new), **call})
            self._buf = rest[end:]
        self.calls += new
        if self._mode == "text":
            out, self._buf = self._buf, ""
            if self.calls and not out.strip():
                out = ""
            return out, new
        return "", new

    def flush(self) -> str:
        """What is left at the end (an unfinished call stays as text; blank after calls is layout)."""
        rest, self._buf = self._buf, ""
        return "" if self.calls and not rest.strip() else rest


def _untag(text: str) -> str:
    text = text.lstrip()
    return text[len(PYTHON_TAG):].lstrip() if text.startswith(PYTHON_TAG) else text
