"""A generation's text as OpenAI's answer: one JSON object, or server-sent events ending ``data: [DONE]``.

A chat stream starts each choice with a chunk that names the role (``{"role": "assistant", "content": ""}``),
sends text as ``delta.content``, and ends each choice with an empty delta carrying its ``finish_reason``; a
completions stream sends ``text`` pieces, the last one with its ``finish_reason``. With
``stream_options.include_usage`` one more chunk, with no choices, carries the usage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from . import protocol as p
from .api_errors import APIError
from .generation import Generation

DISCONNECT_POLL_S = 0.2  # how often a non-streaming request checks that its client is still there


class SSEResponse(StreamingResponse):
    """A stream that always runs ``on_close`` when it ends: finished, failed, or the client gone (Starlette
    cancels the stream on a disconnect; ``on_close`` then aborts what the engine still runs)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def stream(gen: Generation, kind: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    """The SSE lines of a ``chat`` or ``completion`` stream."""
    rid, created = p.new_id("chatcmpl" if kind == "chat" else "cmpl"), p.now()
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(choices: list, usage: dict | None = None) -> str:
        return sse(p.envelope(obj, rid, created, model, choices, usage))

    try:
        if kind == "chat":
            for i in range(gen.n):
                yield chunk([p.chat_chunk_choice(i, {"role": "assistant", "content": ""}, None)])
        async for d in gen.deltas():
            if kind != "chat":
                yield chunk([p.completion_choice(d.index, d.text, d.finish_reason)])
                continue
            if d.text:
                yield chunk([p.chat_chunk_choice(d.index, {"content": d.text}, None)])
            if d.finish_reason:
                yield chunk([p.chat_chunk_choice(d.index, {}, d.finish_reason)])
        if include_usage:
            yield chunk([], p.usage(len(gen.prompt_ids), gen.completion_tokens))
    except APIError as e:  # the engine failed mid-stream: say so in the stream, as vLLM does
        yield sse(e.body())
    yield sse("[DONE]")


async def whole(request: Request, gen: Generation, kind: str, model: str) -> Response:
    """The answer as one JSON object, once every choice has ended (or nothing, if the client left first)."""
    texts = [""] * gen.n

    async def collect() -> None:
        async for d in gen.deltas():
            texts[d.index] += d.text

    try:
        if not await until_done_or_disconnected(request, collect()):
            return Response(status_code=499)  # the client went away; nobody reads this
    finally:
        gen.close()
    usage = p.usage(len(gen.prompt_ids), gen.completion_tokens)
    if kind == "chat":
        choices = [p.chat_choice(i, t, r) for i, (t, r) in enumerate(zip(texts, gen.finish_reasons))]
        return JSONResponse(p.envelope("chat.completion", p.new_id("chatcmpl"), p.now(), model, choices, usage))
    choices = [p.completion_choice(i, t, r) for i, (t, r) in enumerate(zip(texts, gen.finish_reasons))]
    return JSONResponse(p.envelope("text_completion", p.new_id("cmpl"), p.now(), model, choices, usage))


async def until_done_or_disconnected(request: Request, work) -> bool:
    """``await work``; False (and ``work`` cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                task.result()  # its exception, if it raised
                return True
            if await request.is_disconnected():
                return False
    finally:
        task.cancel()
