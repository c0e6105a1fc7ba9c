"""Tool (function) calling: the OpenAI `tools` / `tool_choice` fields over a model's own format.

A model calls tools in the text format its chat template teaches it. Hermes' format (Qwen2.5 /
Qwen3, Hermes, many fine-tunes) is the one shipped here:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The template renders the `tools` list into the prompt; the reply is parsed back into OpenAI's
`tool_calls` (also while streaming: text before a call streams as content, a call is sent as one
delta once its closing tag arrives). `tool_choice`:

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
    begin: str  # opens a call (a line of its own)
    end: str  # closes it (a line of its own)
    separator: str  # between two calls
    arguments_key: str  # the call object's key for the arguments ("arguments" / "parameters")


HERMES = ToolFormat(name="hermes", begin="<tool_call>", end="</tool_call>", separator="\n",
                    arguments_key="arguments")
FORMATS = {f.name: f for f in (HERMES,)}


def detect_format(chat_template: str | None) -> ToolFormat | None:
    """The format a chat template teaches (it writes the format's opening tag), or None."""
    if not chat_template:
        return None
    return next((f for f in FORMATS.values() if f.begin.strip() in chat_template), None)


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
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        args = obj.get(self.fmt.arguments_key, {})
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                "function": {"name": obj["name"], "arguments": args}}
