"""The OpenAI request bodies the server accepts, and the response objects it builds, as plain data.

Field names and defaults follow OpenAI's API reference for ``/v1/chat/completions`` and ``/v1/completions``
(``max_tokens`` defaults to 16 for completions; ``temperature`` and ``top_p`` to 1; ``n`` to 1). Numbers are
strict: ``"max_tokens": "5"`` is a wrong-typed field (400), not a 5. Fields this server does not implement
(``logprobs``, ``tools``, ...) are ignored, as vLLM ignores unknown fields of its OpenAI server.
Limits that depend on the model and the pool (context length, ``max_tokens`` < 1) are not checked here: the
engine's own ``check_request`` decides them, so the server and the library can never disagree.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = StrictInt | StrictFloat  # 0 and 0.7 are both temperatures; "0" is not


class StreamOptions(BaseModel):
    include_usage: StrictBool = False  # one last chunk with the request's usage before [DONE]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class SamplingFields(BaseModel):
    """What both endpoints share."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = None  # None: the one model this server serves
    max_tokens: StrictInt | None = None
    temperature: Number = 1.0
    top_p: Number = 1.0
    seed: StrictInt | None = None  # None: a fresh random seed per request
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = Field(default=1, ge=1, le=128)  # the engine bounds it further (max_running, the budget)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None  # OpenAI's newer name for max_tokens


class CompletionRequest(SamplingFields):
    prompt: StrictStr


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish_reason}  # fmt: skip


def chat_chunk_choice(index: int, delta: dict, finish_reason: str | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def completion_choice(index: int, text: str, finish_reason: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def envelope(kind: str, rid: str, created: int, model: str, choices: list, usage_: dict | None = None) -> dict:
    """A response or a stream chunk: ``kind`` is ``chat.completion``, ``chat.completion.chunk`` or
    ``text_completion`` (a completions stream's chunks are ``text_completion`` objects too)."""
    body = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    if usage_ is not None or not kind.endswith("chunk"):
        body["usage"] = usage_
    return body
