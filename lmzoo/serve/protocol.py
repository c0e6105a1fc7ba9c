"""The OpenAI API's request shapes (the fields lmzoo honours) and its error shape.

Fields OpenAI defines that lmzoo does not implement yet are refused with a 400 naming the field
(`UNSUPPORTED`), never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# field -> why it is refused (for now)
UNSUPPORTED = {
    "tools": "tool calling is not implemented yet",
    "tool_choice": "tool calling is not implemented yet",
    "functions": "function calling is not implemented yet",
    "response_format": "constrained output (json_object / json_schema) is not implemented yet",
    "logit_bias": "logit_bias is not implemented",
    "best_of": "best_of is not implemented",
    "echo": "echo is not implemented",
    "suffix": "suffix (insertion) is not implemented",
}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields: checked against UNSUPPORTED, else ignored as OpenAI does

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        s = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(s) > 4 or any(not x for x in s):
            raise ValueError("stop: up to 4 non-empty strings")
        return s

    def refused(self) -> str | None:
        extra = self.model_extra or {}
        return next((name for name in UNSUPPORTED if extra.get(name) not in (None, False, [], {})), None)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def plain(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):  # content parts: text only
            texts = []
            for part in content:
                if part.get("type") != "text":
                    raise ValueError(f"message content parts of type {part.get('type')!r} are not supported (text only)")
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: str | list[int]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
