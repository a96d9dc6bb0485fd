"""The load generator (``python -m cblab_teach.loadgen``): its metric math on hand-made records, and whole runs
against this project's server (the tiny character model, one token per character) and against stub servers that
refuse, hang, or send no usage. Every server binds 127.0.0.1 on a free port in a thread of this process.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cblab_teach import Engine, EngineConfig
from cblab_teach.serve import build_app, serve_in_background, tiny_text_model
from cblab_teach.serve.loadgen_arrivals import arrival_times
from cblab_teach.serve.loadgen_cli import main
from cblab_teach.serve.loadgen_metrics import RequestRecord, compute_metrics
from cblab_teach.serve.loadgen_prompts import CHAT_QUESTIONS, chat_prompts, length_bounds, random_prompts
from cblab_teach.serve.loadgen_run import LoadSettings, run_blocking, run_rate, run_sweep

fastapi = pytest.importorskip("fastapi")
pytestmark = pytest.mark.timeout(120)

CONFIG = EngineConfig(max_tokens_per_step=64, prefill_chunk_size=16, block_size=8, num_blocks=512)
LATENCIES = ("ttft", "tpot", "itl", "e2el")


# -- the metric math, by hand ------------------------------------------------------------------------------
def hand_made() -> list[RequestRecord]:
    return [
        RequestRecord(True, prompt_tokens=10, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1] * 4),  # TPOT 0.1
        RequestRecord(True, prompt_tokens=20, output_tokens=3, ttft=0.2, latency=0.6, itl=[0.2, 0.2]),  # TPOT 0.2
        RequestRecord(True, prompt_tokens=5, output_tokens=1, ttft=0.3, latency=0.3),  # one token: no TPOT
        RequestRecord(False, prompt_tokens=99, output_tokens=99, error="HTTP 429"),  # counts nowhere but failed
    ]


def test_metrics_on_hand_made_records_match_vllm_definitions_worked_by_hand():
    m = compute_metrics(hand_made(), duration_s=2.0)
    assert (m["completed"], m["failed"], m["total_input_tokens"], m["total_output_tokens"]) == (3, 1, 35, 9)
    assert m["request_throughput"] == pytest.approx(1.5)  # 3 requests / 2 s
    assert m["output_throughput"] == pytest.approx(4.5)  # 9 tokens / 2 s
    assert m["total_token_throughput"] == pytest.approx(22.0)  # (35 + 9) / 2 s
    assert m["request_goodput"] is None  # no SLO given
    want = {  # linear interpolation: p90 of [100, 200, 300] sits at index 1.8, i.e. 200 + 0.8 * 100
        "ttft": (200.0, 200.0, 280.0, 298.0),
        "tpot": (150.0, 150.0, 190.0, 199.0),  # (0.5-0.1)/4 and (0.6-0.2)/2; the one-token request left out
        "itl": (800.0 / 6, 100.0, 200.0, 200.0),  # [100]*4 + [200]*2 pooled: p90 at index 4.5
        "e2el": (1400.0 / 3, 500.0, 580.0, 598.0),
    }
    for name, (mean, median, p90, p99) in want.items():
        got = (m[f"mean_{name}_ms"], m[f"median_{name}_ms"], m[f"p90_{name}_ms"], m[f"p99_{name}_ms"])
        assert got == pytest.approx((mean, median, p90, p99)), name
        assert m[f"p50_{name}_ms"] == pytest.approx(median)


def test_goodput_counts_requests_meeting_every_slo_per_second():
    records = hand_made()
    assert compute_metrics(records, 2.0, {"ttft": 250})["request_goodput"] == pytest.approx(1.0)  # r1, r2
    assert compute_metrics(records, 2.0, {"ttft": 250, "tpot": 150})["request_goodput"] == pytest.approx(0.5)
    assert compute_metrics(records, 2.0, {"tpot": 50})["request_goodput"] == pytest.approx(0.5)  # 1 token: TPOT 0
    assert compute_metrics(records, 2.0, {"e2el": 450})["request_goodput"] == pytest.approx(0.5)
    assert compute_metrics(records, 2.0, {"ttft": 1e9, "tpot": 1e9})["request_goodput"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="unknown SLO"):
        compute_metrics(records, 2.0, {"itl": 5})


def test_all_failed_summarises_to_zeros_not_an_error():
    m = compute_metrics([RequestRecord(False, error="refused")] * 3, 1.0, {"ttft": 10})
    assert (m["completed"], m["failed"], m["request_goodput"], m["p99_ttft_ms"]) == (0, 3, 0.0, 0.0)


def test_poisson_arrivals_are_normalised_like_vllm_and_inf_sends_at_once():
    times = arrival_times(2000, rate=10.0, seed=1)
    gaps = np.diff([0.0, *times])
    assert times[-1] == pytest.approx(200.0) and np.all(gaps >= 0)  # the last leaves at n / rate
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)  # exponential gaps: std equals mean
    assert arrival_times(2000, 10.0, seed=1) == times != arrival_times(2000, 10.0, seed=2)
    assert arrival_times(4, 2.0, burstiness=math.inf) == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert arrival_times(3, math.inf) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        arrival_times(3, 0.0)


def test_prompt_lengths_are_sampled_in_vllm_s_interval():
    assert length_bounds(10, 0.5, floor_one=True) == (5, 15) and length_bounds(1, 0.5, floor_one=True) == (1, 2)
    specs = random_prompts(200, input_len=10, output_len=20, range_ratio=0.5, seed=3)
    assert {len(s.prompt.split()) for s in specs} <= set(range(5, 16)) and len({s.max_tokens for s in specs}) > 5
    assert all(10 <= s.max_tokens <= 30 for s in specs)
    assert {(len(s.prompt.split()), s.max_tokens) for s in random_prompts(20, 7, 9)} == {(7, 9)}
    assert {s.prompt for s in chat_prompts(len(CHAT_QUESTIONS), 8)} == set(CHAT_QUESTIONS)


# -- against this project's server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def url():
    tiny = tiny_text_model(dtype=torch.float32)
    with serve_in_background(build_app(tiny, Engine(tiny.model, CONFIG), max_waiting=64)) as base:
        yield base


def check_consistent(run: dict) -> None:
    """What must hold for any run: ordered percentiles, the throughputs' arithmetic, TPOT from the raw records."""
    for name in LATENCIES:
        assert 0 <= run[f"p50_{name}_ms"] <= run[f"p90_{name}_ms"] <= run[f"p99_{name}_ms"], name
        assert run[f"median_{name}_ms"] == run[f"p50_{name}_ms"]
    done = [r for r in run["requests"] if r["success"]]
    assert run["total_output_tokens"] == sum(r["output_tokens"] for r in done)
    assert run["output_throughput"] == pytest.approx(run["total_output_tokens"] / run["duration"])
    assert run["request_throughput"] == pytest.approx(len(done) / run["duration"])
    tpots = [(r["latency"] - r["ttft"]) / (r["output_tokens"] - 1) for r in done if r["output_tokens"] > 1]
    assert run["mean_tpot_ms"] == pytest.approx(1000 * sum(tpots) / len(tpots))
    itls = [g for r in done for g in r["itl"]]
    assert run["mean_itl_ms"] == pytest.approx(1000 * sum(itls) / len(itls))
    for r in done:
        assert 0 < r["ttft"] <= r["latency"] and r["ttft"] + sum(r["itl"]) <= r["latency"] + 1e-9
    if run["request_goodput"] is not None:
        assert run["request_goodput"] <= run["request_throughput"]


def test_a_sweep_at_rate_50_and_inf_completes_every_request_with_the_server_s_token_counts(url):
    prompts = random_prompts(12, input_len=4, output_len=6, range_ratio=0.5, seed=0)
    settings = LoadSettings(base_url=url + "/v1", progress=False, request_timeout_s=30, slo_ms={"ttft": 1e9})
    runs = run_blocking(run_sweep(prompts, [50.0, math.inf], settings))
    assert [r["request_rate"] for r in runs] == [50.0, "inf"] and runs[0]["model"] == "cblab-char-tiny"
    for run in runs:
        assert (run["completed"], run["failed"]) == (12, 0), [r["error"] for r in run["requests"]]
        for spec, r in zip(prompts, run["requests"]):  # the character model: one token per character
            assert r["usage_reported"] and r["prompt_tokens"] == len(spec.prompt)
            assert r["output_tokens"] == len(r["text"]) == spec.max_tokens  # no end token: exactly max_tokens
        assert run["total_input_tokens"] == sum(len(s.prompt) for s in prompts)
        assert run["request_goodput"] == run["request_throughput"]  # a huge SLO: every request is good
        check_consistent(run)
    sent_50 = [r["sent_at"] for r in runs[0]["requests"]]
    assert max(sent_50) >= 0.2  # Poisson arrivals spread over n / rate = 0.24 s; inf sends them together
    assert max(r["sent_at"] for r in runs[1]["requests"]) < max(sent_50)


def test_the_command_line_writes_the_json_and_goodput_falls_to_0_under_an_impossible_slo(url, tmp_path, capsys):
    path = tmp_path / "load.json"
    args = ["--base-url", url, "--endpoint", "chat", "--dataset", "chat", "--num-prompts", "6", "--output-len", "5",
            "--max-concurrency", "3", "--no-progress", "--result-file", str(path)]  # fmt: skip
    assert main([*args, "--slo-ttft-ms", "1e9", "--slo-tpot-ms", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "Serving Benchmark Result" in out and "Request goodput" in out and "P99 TPOT (ms):" in out
    data = json.loads(path.read_text())
    assert data["config"]["endpoint"] == "chat" and data["config"]["request_rates"] == ["inf"]
    (run,) = data["runs"]
    for key in ("completed", "failed", "duration", "request_throughput", "request_goodput", "output_throughput",
                "total_token_throughput", "total_input_tokens", "total_output_tokens", "max_concurrency", "requests"):  # fmt: skip
        assert key in run, key
    for name in LATENCIES:
        for stat in ("mean", "median", "std", "p50", "p90", "p99"):
            assert isinstance(run[f"{stat}_{name}_ms"], float)
    assert run["completed"] == 6 and run["request_goodput"] == run["request_throughput"] > 0
    assert all(r["prompt_tokens"] == len(q) for r, q in zip(run["requests"], [s.prompt for s in chat_prompts(6, 5)]))
    check_consistent(run)
    assert main([*args, "--slo-ttft-ms", "0.001"]) == 0  # a microsecond to the first token: nobody makes it
    (run,) = json.loads(path.read_text())["runs"]
    assert run["completed"] == 6 and run["request_goodput"] == 0.0


# -- servers that fail ---------------------------------------------------------------------------------------
def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stub_app():
    """Answers 429 to completions, hangs on chat, and streams without usage on /nousage/v1/completions."""
    from fastapi.responses import JSONResponse, StreamingResponse

    app = fastapi.FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "stub", "object": "model"}]}

    @app.post("/v1/completions")
    async def busy() -> JSONResponse:
        return JSONResponse({"error": {"message": "queue full", "type": "rate_limit", "code": 429}}, status_code=429)

    @app.post("/v1/chat/completions")
    async def hang() -> StreamingResponse:
        async def forever():
            yield 'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
            await asyncio.sleep(60)

        return StreamingResponse(forever(), media_type="text/event-stream")

    @app.post("/nousage/v1/completions")
    async def no_usage() -> StreamingResponse:
        async def three():
            for piece in ("ab", "c", "d"):
                yield f'data: {{"choices": [{{"index": 0, "text": "{piece}"}}]}}\n\n'
            yield "data: [DONE]\n\n"

        return StreamingResponse(three(), media_type="text/event-stream")

    return app


def test_failures_are_counted_not_raised(capsys):
    prompts = random_prompts(3, 2, 2)
    nothing = LoadSettings(base_url=f"http://127.0.0.1:{free_port()}", progress=False, request_timeout_s=5)
    run = run_blocking(run_rate(prompts, math.inf, nothing))  # no model given and /v1/models unreachable too
    assert (run["completed"], run["failed"]) == (0, 3) and all("Connect" in r["error"] for r in run["requests"])
    assert main(["--base-url", nothing.base_url, "--num-prompts", "2", "--no-progress"]) == 1
    assert "Failed requests:" in capsys.readouterr().out
    with serve_in_background(stub_app()) as base:
        refused = run_blocking(run_rate(prompts, 100.0, LoadSettings(base_url=base, progress=False)))
        assert refused["model"] == "stub" and refused["failed"] == 3
        assert all(r["error"].startswith("HTTP 429") for r in refused["requests"])
        hung = LoadSettings(base_url=base, endpoint="chat", progress=False, request_timeout_s=0.3)
        run = run_blocking(run_rate(prompts[:1], math.inf, hung))
        assert run["failed"] == 1 and "within 0.3 s" in run["requests"][0]["error"]
        quiet = run_blocking(run_rate(prompts, math.inf, LoadSettings(base_url=base + "/nousage", progress=False)))
    assert quiet["completed"] == 3 and not quiet["usage_reported"]
    assert {r["output_tokens"] for r in quiet["requests"]} == {3}  # no usage: text-carrying chunks are counted
    assert {r["text"] for r in quiet["requests"]} == {"abcd"} and all(len(r["itl"]) == 2 for r in quiet["requests"])


def test_run_blocking_works_where_an_event_loop_already_runs():
    """A Jupyter kernel (and a test session driving a browser) runs an event loop in the main thread, where
    asyncio.run refuses; run_blocking gives the coroutine a loop of its own there."""

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def inside_a_running_loop() -> int:
        refused = answer()
        with pytest.raises(RuntimeError, match="running event loop"):
            asyncio.run(refused)  # what the loadgen did before: refused here
        refused.close()
        return run_blocking(answer())

    assert run_blocking(answer()) == 42
    with ThreadPoolExecutor(1) as fresh:  # a thread with no loop of its own, whatever runs in this one
        assert fresh.submit(asyncio.run, inside_a_running_loop()).result() == 42
