"""Soak: minutes of Poisson load on the HTTP server, with clients that leave mid-stream and bad requests mixed in.

The server (``python -m cblab_teach serve --model tiny``, its own process, on 127.0.0.1 and a free port; or any
running one, ``--base-url``) gets requests on a Poisson schedule for ``--seconds``. Each request is, at random:

* **normal** (most): a streamed or whole completion read to its end; **served** when its answer came back
  complete (a ``finish_reason``, and ``data: [DONE]`` for a stream);
* **leaves**: a stream the client closes after a few chunks; **aborted**;
* **bad**: malformed JSON, a wrong-typed field, ``max_tokens`` 0, an unknown model, a prompt past the context;
  **rejected** when the answer is the expected 4xx with OpenAI's error shape.

A request the server turns away because its queue is full is **refused** (HTTP 429). Anything else (a 5xx, a
wrong status or error shape, a cut stream, no answer within the time limit) is an **error**. Every request sent
must end with exactly one of these outcomes: **lost** counts the ones that did not, and must be 0.

At the end, with no load, ``/metrics`` must show the engine idle: nothing running or waiting and
``cblab:kv_cache_usage_perc`` 0 (every aborted client's KV freed). The server's own counts are checked against
the clients': ``request_success_total + request_aborted_total`` equals the requests it admitted (served + aborted;
a client that leaves just as its answer ends may be a success on one side and an abort on the other, so the
sum is compared, not the parts).

Bounded in time and count: arrivals stop after ``--seconds`` (and at most ``rate x seconds x 2`` requests), each
request has a time limit, and the drain at the end waits at most ``DRAIN_S``.

::

    python -m benchmarks.run --only soak             # 3 minutes
    python -m benchmarks.run --only soak --quick     # 15 seconds
    python -m benchmarks.bench_soak --seconds 60 --rate 20 [--base-url http://127.0.0.1:8000]

It is not part of ``make test`` (``benchmarks/run.py`` runs it on request or in ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import plotly.graph_objects as go

OUTCOMES = ("served", "refused", "aborted", "rejected", "errors")
REQUEST_TIMEOUT_S = 60.0
DRAIN_S = 60.0  # after the last arrival: requests still in flight must end by then, or they count as lost
PROMPT_WORDS = ("Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. "
                "Flat is better than nested. Sparse is better than dense. Readability counts.").split()  # fmt: skip
# malformed or refused bodies, and the status each must get
BAD_BODIES = (
    (b'{"prompt": "Flat", ', 400),
    ({"prompt": "Flat", "max_tokens": "3"}, 400),
    ({"prompt": "Flat", "max_tokens": 0}, 400),
    ({"prompt": "Flat", "model": "gpt-4o"}, 404),
    ({"prompt": "Flat", "max_tokens": 100_000}, 400),
    ({"max_tokens": 3}, 400),
)


@dataclass
class SoakSettings:
    seconds: float = 180.0
    rate: float = 6.0  # requests per second, Poisson: bursts fill the server's short queue (429s) now and then
    leave_share: float = 0.15  # clients that close their stream after a few chunks
    bad_share: float = 0.10
    stream_share: float = 0.7  # of the normal requests, streamed (the rest: one JSON answer)
    max_tokens: tuple[int, int] = (8, 64)
    seed: int = 0


def server_flags() -> list[str]:
    """The server this soak starts: the tiny model, a small running set and a short queue, so 429s happen."""
    return ["--model", "tiny", "--max-running", "16", "--max-waiting", "8", "--max-tokens-per-step", "128",
            "--prefill-chunk-size", "32", "--num-blocks", "512", "--block-size", "16"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m cblab_teach serve`` in a child process (its own GIL, as a deployment has), stopped on exit."""

    def __init__(self, flags: list[str], start_timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "cblab_teach", "serve", *flags, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {start_timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def read_metrics(text: str) -> dict[str, float]:
    """``cblab:`` samples summed over their labels (``request_success_total`` over its finish reasons)."""
    out: dict[str, float] = {}
    for name, value in re.findall(r"^(cblab:[a-z_]+)(?:\{[^}]*\})? (\S+)$", text, flags=re.M):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def is_openai_error(r: httpx.Response) -> bool:
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and {"message", "type", "code"} <= set(error) and bool(error["message"])


@dataclass
class Tally:
    outcomes: dict[int, str] = field(default_factory=dict)  # request number -> its one outcome
    reasons: Counter = field(default_factory=Counter)  # why each error was one
    output_tokens: int = 0

    def end(self, i: int, outcome: str, why: str = "") -> None:
        if i in self.outcomes:  # a second outcome for one request would hide a lost one
            self.reasons[f"request {i} ended twice"] += 1
            return
        self.outcomes[i] = outcome
        if outcome == "errors":
            self.reasons[why[:160]] += 1


async def one_request(client: httpx.AsyncClient, i: int, kind: str, rng: random.Random, s: SoakSettings,
                      tally: Tally) -> None:  # fmt: skip
    """Send request ``i`` of ``kind`` (``normal``, ``stream``, ``leave``, ``bad``) and record its one outcome."""
    prompt = " ".join(rng.choices(PROMPT_WORDS, k=rng.randint(2, 12)))
    body = {"prompt": prompt, "max_tokens": rng.randint(*s.max_tokens), "temperature": 0}
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            if kind == "bad":
                bad, status = BAD_BODIES[rng.randrange(len(BAD_BODIES))]
                if isinstance(bad, bytes):
                    r = await client.post("/v1/completions", content=bad, headers={"content-type": "application/json"})
                else:
                    r = await client.post("/v1/completions", json=bad)
                if r.status_code == 429:
                    return tally.end(i, "refused")
                ok = r.status_code == status and is_openai_error(r)
                return tally.end(i, "rejected" if ok else "errors", f"bad body got {r.status_code}: {r.text[:80]}")
            if kind == "normal":
                r = await client.post("/v1/completions", json=body)
                if r.status_code == 429:
                    return tally.end(i, "refused" if is_openai_error(r) else "errors", "429 without an error body")
                if r.status_code != 200:
                    return tally.end(i, "errors", f"HTTP {r.status_code}: {r.text[:80]}")
                answer = r.json()
                if answer["choices"][0]["finish_reason"] not in ("stop", "length"):
                    return tally.end(i, "errors", f"finish_reason {answer['choices'][0]['finish_reason']!r}")
                tally.output_tokens += answer["usage"]["completion_tokens"]
                return tally.end(i, "served")
            leave_after = rng.randint(1, 4) if kind == "leave" else None
            streamed = body | {"stream": True, "stream_options": {"include_usage": True}}
            async with client.stream("POST", "/v1/completions", json=streamed) as r:
                if r.status_code == 429:
                    await r.aread()
                    return tally.end(i, "refused" if is_openai_error(r) else "errors", "429 without an error body")
                if r.status_code != 200:
                    return tally.end(i, "errors", f"HTTP {r.status_code}")
                chunks, finish, done, tokens = 0, None, False, 0
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return tally.end(i, "errors", f"error in the stream: {chunk['error']['message'][:80]}")
                    if chunk.get("usage"):  # the last chunk, with no choices
                        tokens = chunk["usage"]["completion_tokens"]
                        continue
                    chunks += 1
                    finish = chunk["choices"][0]["finish_reason"] or finish
                    if leave_after is not None and chunks >= leave_after and finish is None:
                        return tally.end(i, "aborted")  # leaving the block closes the connection mid-stream
                if done and finish in ("stop", "length"):
                    tally.output_tokens += tokens
                    return tally.end(i, "served")
                return tally.end(i, "errors", f"stream ended: done={done} finish_reason={finish!r}")
    except TimeoutError:
        return tally.end(i, "errors", f"{kind}: no answer within {REQUEST_TIMEOUT_S} s")
    except (httpx.HTTPError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        return tally.end(i, "errors", f"{kind}: {type(e).__name__}: {e!r}")


async def sample_metrics(client: httpx.AsyncClient, t0: float, samples: list[dict], stop: asyncio.Event) -> None:
    """``/metrics`` twice a second while the load runs: the figure of running, waiting and KV over time."""
    while not stop.is_set():
        try:
            m = read_metrics((await client.get("/metrics", timeout=5)).text)
            samples.append({"t": time.perf_counter() - t0, "running": m.get("cblab:num_requests_running", 0.0),
                            "waiting": m.get("cblab:num_requests_waiting", 0.0),
                            "kv": m.get("cblab:kv_cache_usage_perc", 0.0)})  # fmt: skip
        except httpx.HTTPError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def wait_idle(client: httpx.AsyncClient, timeout: float) -> dict[str, float]:
    """The server's metrics once nothing runs, waits or holds KV (or after ``timeout``: then they show what is left)."""
    deadline = time.monotonic() + timeout
    while True:
        m = read_metrics((await client.get("/metrics", timeout=10)).text)
        idle = all(m.get(f"cblab:{k}", -1) == 0 for k in ("num_requests_running", "num_requests_waiting",
                                                           "kv_cache_usage_perc"))  # fmt: skip
        if idle or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.1)


async def soak(base_url: str, s: SoakSettings) -> dict:
    rng = random.Random(s.seed)
    cap = int(s.rate * s.seconds * 2) + 10  # a bound on the count, whatever the draws
    gaps = np.random.default_rng(s.seed).exponential(1.0 / s.rate, size=cap)
    # idle connections are dropped by the client before uvicorn's keep-alive timeout (5 s) closes them: otherwise a
    # request sent on a connection the server is closing that instant fails with a ReadError, on any HTTP/1.1 pair
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=2.0)
    tally, samples, stop = Tally(), [], asyncio.Event()
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits, trust_env=False) as c:
        before = read_metrics((await c.get("/metrics", timeout=10)).text)
        t0 = time.perf_counter()
        sampler = asyncio.create_task(sample_metrics(c, t0, samples, stop))
        tasks, at, kinds = [], 0.0, Counter()
        for i in range(cap):
            at += float(gaps[i])
            if at > s.seconds:
                break
            if (wait := t0 + at - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            u = rng.random()
            kind = "bad" if u < s.bad_share else "leave" if u < s.bad_share + s.leave_share else (
                "stream" if rng.random() < s.stream_share else "normal")  # fmt: skip
            kinds[kind] += 1
            tasks.append(asyncio.create_task(one_request(c, i, kind, random.Random(rng.random()), s, tally)))
        sent_s = time.perf_counter() - t0
        _, pending = await asyncio.wait(tasks, timeout=DRAIN_S) if tasks else (set(), set())
        for task in pending:  # still unanswered after the drain: lost, not waited for forever
            task.cancel()
        duration = time.perf_counter() - t0
        after = await wait_idle(c, timeout=30)
        stop.set()
        await sampler
    counts = Counter(tally.outcomes.values())
    sent = len(tasks)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    server_admitted = delta.get("cblab:request_success_total", 0.0) + delta.get("cblab:request_aborted_total", 0.0)
    metrics = {
        "seconds": s.seconds, "request_rate": s.rate, "sent": sent,
        **{o: counts.get(o, 0) for o in OUTCOMES},
        "lost": sent - sum(counts.values()),
        "sent_bad": kinds["bad"], "sent_leaving": kinds["leave"],
        "server_success": delta.get("cblab:request_success_total", 0.0),
        "server_aborted": delta.get("cblab:request_aborted_total", 0.0),
        "server_counts_match": float(server_admitted == counts.get("served", 0) + counts.get("aborted", 0)),
        "kv_usage_at_end": after.get("cblab:kv_cache_usage_perc", -1.0),
        "running_at_end": after.get("cblab:num_requests_running", -1.0),
        "waiting_at_end": after.get("cblab:num_requests_waiting", -1.0),
        "peak_kv_usage": max((x["kv"] for x in samples), default=0.0),
        "peak_waiting": max((x["waiting"] for x in samples), default=0.0),
        "arrivals_s": sent_s, "duration_s": duration,
        "served_per_s": counts.get("served", 0) / duration if duration else 0.0,
        "served_output_tokens": tally.output_tokens,
    }  # fmt: skip
    return {"metrics": metrics, "samples": samples, "error_reasons": dict(tally.reasons)}


def figures(result: dict) -> list[go.Figure]:
    m, samples = result["metrics"], result["samples"]
    names = [*OUTCOMES, "lost"]
    bars = go.Figure(go.Bar(x=names, y=[m[n] for n in names], marker_color=["#1CA71C", "#FF7F0E", "#7F7F7F",
                                                                             "#1F77B4", "#D62728", "#000000"]))  # fmt: skip
    bars.update_layout(title=f"{m['sent']} requests in {m['seconds']:.0f} s at {m['request_rate']:g} req/s: "
                             "every one ends once (lost must be 0)", yaxis_title="requests")  # fmt: skip
    t = [x["t"] for x in samples]
    over_time = go.Figure([go.Scatter(x=t, y=[x["running"] for x in samples], name="running"),
                           go.Scatter(x=t, y=[x["waiting"] for x in samples], name="waiting"),
                           go.Scatter(x=t, y=[100 * x["kv"] for x in samples], name="KV in use (%)", yaxis="y2")])  # fmt: skip
    over_time.update_layout(title="the server under the soak, from /metrics (KV back to 0 at the end)",
                            xaxis_title="seconds", yaxis_title="requests",
                            yaxis2={"title": "KV %", "overlaying": "y", "side": "right", "range": [0, 100]})  # fmt: skip
    return [bars, over_time]


def run(quick: bool = False, base_url: str | None = None, settings: SoakSettings | None = None) -> dict:
    """The soak against ``base_url``, or against a tiny-model server it starts (and stops)."""
    s = settings or SoakSettings(seconds=15.0 if quick else 180.0)
    server = None if base_url else ServerProcess(server_flags())
    try:
        result = asyncio.run(soak(base_url or server.url, s))
    finally:
        if server is not None:
            server.stop()
    m = result["metrics"]
    table = [{"outcome": o, "requests": m[o]} for o in (*OUTCOMES, "lost")]
    table += [{"outcome": f"error: {why}", "requests": n} for why, n in result["error_reasons"].items()]
    return {"name": "soak", "metrics": m, "figures": figures(result), "table": table,
            "server": base_url or "python -m cblab_teach serve " + " ".join(server_flags())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=180.0, help="how long arrivals go on")
    p.add_argument("--rate", type=float, default=6.0, help="Poisson arrivals, requests per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-url", default=None, help="a running server (default: start a tiny-model one)")
    a = p.parse_args(argv)
    if not (0 < a.seconds <= 3600 and 0 < a.rate <= 1000):
        p.error("--seconds must be in (0, 3600] and --rate in (0, 1000]")
    result = run(base_url=a.base_url, settings=SoakSettings(seconds=a.seconds, rate=a.rate, seed=a.seed))
    print(json.dumps(result["metrics"], indent=2))
    for row in result["table"]:
        if row["outcome"].startswith("error:"):
            print(f"{row['requests']:>5}  {row['outcome']}")
    m = result["metrics"]
    healthy = m["lost"] == 0 and m["errors"] == 0 and m["kv_usage_at_end"] == 0 and m["server_counts_match"] == 1
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
