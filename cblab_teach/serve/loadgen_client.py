"""One streamed request to an OpenAI-compatible server, timed chunk by chunk (httpx, async).

The body is what ``vllm bench serve`` sends (``vllm/benchmarks/lib/endpoint_request_func.py``): ``stream`` with
``stream_options.include_usage``, so the server's own token counts come back in a last chunk; ``max_tokens``
(``max_completion_tokens`` for chat, as vLLM sends); and ``ignore_eos: true`` when asked, a vLLM and SGLang
extension that makes the server generate exactly ``max_tokens`` (servers that do not know it, like this
course's, ignore unknown fields; its tiny model has no end token anyway). Whatever the server does, the record
says what really came back. Every failure (refused connection, HTTP error, an error inside the stream, a stream
cut before ``[DONE]``, the time limit) becomes a failed record, never an exception.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from .loadgen_metrics import RequestRecord
from .loadgen_prompts import PromptSpec

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def request_body(kind: str, model: str | None, spec: PromptSpec, ignore_eos: bool,
                 temperature: float | None) -> dict:  # fmt: skip
    """The JSON body for ``kind`` (``completions`` or ``chat``)."""
    body: dict = {"stream": True, "stream_options": {"include_usage": True}}
    if model is not None:
        body["model"] = model
    if kind == "chat":
        body |= {"messages": [{"role": "user", "content": spec.prompt}], "max_completion_tokens": spec.max_tokens}
    else:
        body |= {"prompt": spec.prompt, "max_tokens": spec.max_tokens}
    if ignore_eos:
        body["ignore_eos"] = True
    if temperature is not None:
        body["temperature"] = temperature
    return body


def chunk_text(chunk: dict) -> str:
    """The generated text a stream chunk carries (a completion's ``text``, a chat delta's content)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if "delta" in c:
        delta = c["delta"] or {}
        return delta.get("content") or delta.get("reasoning_content") or ""
    return c.get("text") or ""


async def stream_request(client: httpx.AsyncClient, url: str, body: dict, timeout_s: float) -> RequestRecord:
    """Send ``body`` to ``url`` and time its stream; bounded by ``timeout_s`` in all (connect to ``[DONE]``)."""
    record = RequestRecord(success=False, max_tokens=body.get("max_tokens") or body.get("max_completion_tokens", 0))
    start = time.perf_counter()
    previous, chunks, done = None, 0, False
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    detail = (await r.aread())[:300].decode("utf-8", "replace")
                    record.error = f"HTTP {r.status_code}: {detail}"
                    return record
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators and SSE comments (": ping")
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    now = time.perf_counter()
                    chunk = json.loads(data)
                    if "error" in chunk:
                        record.error = f"error in the stream: {json.dumps(chunk['error'])[:300]}"
                        return record
                    record.latency = now - start  # the last chunk before [DONE] ends the request
                    if text := chunk_text(chunk):
                        if previous is None:
                            record.ttft = now - start
                        else:
                            record.itl.append(now - previous)
                        previous, chunks = now, chunks + 1
                        record.text += text
                    if usage := chunk.get("usage"):
                        record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        record.output_tokens = int(usage.get("completion_tokens") or 0)
                        record.usage_reported = True
    except TimeoutError:
        record.error = f"no complete answer within {timeout_s} s"
        return record
    except (httpx.HTTPError, OSError, ValueError, TypeError, AttributeError, KeyError) as e:  # refused, reset,
        # malformed JSON or chunks of an unexpected shape: any server's mistake is a failed request, not a crash
        record.error = f"{type(e).__name__}: {e}"
        return record
    if not done:
        record.error = "the stream ended without [DONE]"
    elif previous is None:
        record.error = "the stream carried no generated text (no TTFT to measure)"
    else:
        record.success = True
        if not record.usage_reported:
            record.output_tokens = chunks
    return record
