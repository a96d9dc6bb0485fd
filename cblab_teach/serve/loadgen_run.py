"""One benchmark run per request rate: send the prompts on their Poisson schedule, gather records, compute.

As in ``vllm bench serve``'s ``benchmark``: the run's clock starts before the first request leaves and stops
when the last one has ended; ``max_concurrency`` caps requests in flight with a semaphore (a request whose turn
has come waits for a free slot, and its clock starts only when it is sent). Bounded: every request has a total
time limit, so a run ends by itself even against a server that hangs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from tqdm.auto import tqdm

from .loadgen_arrivals import arrival_times
from .loadgen_client import ENDPOINTS, request_body, stream_request
from .loadgen_metrics import RequestRecord, compute_metrics
from .loadgen_prompts import PromptSpec

MAX_PROMPTS = 100_000  # a cap on one run: a typo must not become a day-long run


@dataclass
class LoadSettings:
    """Everything a run needs besides its prompts and its rate."""

    base_url: str  # the server, without /v1 (http://127.0.0.1:8000)
    endpoint: str = "completions"  # or "chat"
    model: str | None = None  # None: the server's first model, or none sent if it lists none
    burstiness: float = 1.0
    max_concurrency: int | None = None
    request_timeout_s: float = 300.0
    ignore_eos: bool = True
    temperature: float | None = None
    seed: int = 0
    slo_ms: dict[str, float] = field(default_factory=dict)
    api_key: str | None = None
    progress: bool = True


def normalize_base_url(url: str) -> str:
    """``http://host:port`` from what people paste (a trailing slash, a ``/v1`` suffix)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def first_model(client: httpx.AsyncClient, base_url: str) -> str | None:
    """The first id of ``GET /v1/models`` (what vLLM's bench does without ``--model``); None if unreachable."""
    try:
        r = await client.get(f"{base_url}/v1/models", timeout=10)
        r.raise_for_status()
        return r.json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return None  # the requests themselves will fail, and be counted as failures


async def run_rate(prompts: Sequence[PromptSpec], rate: float, s: LoadSettings) -> dict:
    """Send ``prompts`` at ``rate`` req/s (``inf``: all at once); the metrics, the settings and the raw records."""
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise ValueError(f"a run sends 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
    if s.endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {sorted(ENDPOINTS)}, got {s.endpoint!r}")
    base = normalize_base_url(s.base_url)
    limit = s.max_concurrency or len(prompts)
    headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else None
    slots = asyncio.Semaphore(limit)
    client = httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(s.request_timeout_s),
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        trust_env=False,  # no proxy from the environment: it would be timed too
    )
    async with client:
        model = s.model or await first_model(client, base)
        bar = tqdm(total=len(prompts), desc=f"rate {rate:g} req/s", unit="req", disable=not s.progress, leave=False)
        start = time.perf_counter()

        async def one(spec: PromptSpec) -> RequestRecord:
            async with slots:
                sent = time.perf_counter() - start
                body = request_body(s.endpoint, model, spec, s.ignore_eos, s.temperature)
                record = await stream_request(client, base + ENDPOINTS[s.endpoint], body, s.request_timeout_s)
            record.sent_at = sent
            bar.update(1)
            return record

        tasks = []
        for spec, at in zip(prompts, arrival_times(len(prompts), rate, s.burstiness, s.seed)):
            if (wait := start + at - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(spec)))
        records = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        bar.close()
    metrics = compute_metrics(records, duration, s.slo_ms)
    config = {"request_rate": "inf" if math.isinf(rate) else rate, "burstiness": s.burstiness,
              "max_concurrency": s.max_concurrency, "num_prompts": len(prompts), "model": model,
              "endpoint": s.endpoint, "base_url": base, "ignore_eos": s.ignore_eos, "slo_ms": s.slo_ms}  # fmt: skip
    return {**config, **metrics, "requests": [record_json(r) for r in records]}


def record_json(r: RequestRecord) -> dict:
    """A record as the result file keeps it (seconds, like vLLM's ``ttfts`` and ``itls`` lists)."""
    return {"success": r.success, "max_tokens": r.max_tokens, "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens, "usage_reported": r.usage_reported, "sent_at": r.sent_at,
            "ttft": r.ttft, "latency": r.latency, "tpot": r.tpot, "itl": r.itl, "text": r.text,
            "error": r.error}  # fmt: skip


async def run_sweep(prompts: Sequence[PromptSpec], rates: Sequence[float], s: LoadSettings) -> list[dict]:
    """One run per rate, one after the other (the server drains between them: each run waits for its last)."""
    return [await run_rate(prompts, rate, s) for rate in rates]


T = TypeVar("T")


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, also where an event loop already runs in this thread (a Jupyter kernel, a test
    session driving a browser): there the coroutine gets its own loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cblab-loadgen") as pool:
        return pool.submit(asyncio.run, coro).result()
