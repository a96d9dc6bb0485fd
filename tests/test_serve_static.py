"""``serve --static``: the same server over static batching, so one HTTP load can be sent to both batchings.

The answers must equal the continuous engine's (each request alone); a request that arrives while a group runs
must wait for the next group, which the engine's records show (not a stopwatch); bad input still gets OpenAI's
error shape. The tiny character model (float64) keeps each test to a second or two.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import replace

import httpx
import pytest
import torch

from cblab_teach import SamplingParams
from cblab_teach.core.static_batching import StaticServingEngine
from cblab_teach.errors import ConfigError
from cblab_teach.serve import TextModel, build_app, serve_in_background, tiny_text_model
from cblab_teach.serve.cli import add_arguments, build
from cblab_teach.serve.loadgen_run import run_blocking

from .test_serve import BAD, CHAT_BAD, PROMPTS, alone, assert_openai_error, assert_still_serving, metric, wait_idle

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tiny() -> TextModel:
    return tiny_text_model(dtype=torch.float64)


@pytest.fixture(scope="module")
def server(tiny):
    app = build_app(tiny, StaticServingEngine(tiny.model, batch_size=4, num_slots=4096), max_waiting=64)
    with serve_in_background(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=30)


def engine_of(app) -> StaticServingEngine:
    return app.state.engine_loop.engine


def test_answers_equal_the_continuous_engine_alone_streamed_or_not(tiny, client):
    want = alone(tiny, PROMPTS[0], 20)
    whole = client.completions.create(model=tiny.name, prompt=PROMPTS[0], max_tokens=20, temperature=0)
    assert whole.choices[0].text == want and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 20
    chunks = list(client.chat.completions.create(model=tiny.name, max_tokens=20, temperature=0, stream=True,
                                                 messages=[{"role": "user", "content": PROMPTS[0]}]))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "length"
    r = client.completions.create(model=tiny.name, prompt="The cat ", max_tokens=12, temperature=0.9, n=2, seed=5)
    base = SamplingParams(temperature=0.9, seed=5)
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == [
        alone(tiny, "The cat ", 12, replace(base, seed=5 + i)) for i in range(2)]  # fmt: skip


def test_concurrent_clients_share_padded_groups_and_every_answer_is_exact(tiny, server):
    app, url = server
    first_step = len(engine_of(app).records)

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
            rs = await asyncio.gather(*(c.completions.create(model=tiny.name, prompt=p, max_tokens=6 + 2 * i,
                                                             temperature=0) for i, p in enumerate(PROMPTS[:5])))  # fmt: skip
            return [r.choices[0].text for r in rs]

    texts = run_blocking(all_at_once())
    assert texts == [alone(tiny, p, 6 + 2 * i) for i, p in enumerate(PROMPTS[:5])]
    wait_idle(url)
    steps = list(engine_of(app).records)[first_step:]
    assert max(len(s.plan.chunks) for s in steps) > 1, "no two HTTP requests ever shared a group"
    assert sum(s.extra["padding_tokens"] for s in steps) > 0  # unequal prompts and lengths: padding was computed
    assert not engine_of(app).requests  # every answered request forgotten


def test_a_request_that_arrives_while_a_group_runs_waits_for_the_next_group(tiny):
    """A runs alone in its group; B and C arrive while it runs and wait (D finds the queue full: 429), though the
    group has room for them; when A's client leaves, A's group ends and B and C form the next one."""
    engine = StaticServingEngine(tiny.model, batch_size=4, num_slots=8192)
    answers: dict[str, str] = {}
    with serve_in_background(build_app(tiny, engine, max_waiting=2)) as url:

        def ask(name: str, prompt: str) -> None:
            r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 6, "temperature": 0},
                           timeout=60)  # fmt: skip
            answers[name] = r.json()["choices"][0]["text"]

        body = {"prompt": PROMPTS[2], "max_tokens": 3000, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as a:
            lines = a.iter_lines()
            next(lines)  # A's group is running
            late = [threading.Thread(target=ask, args=(n, p)) for n, p in (("B", PROMPTS[3]), ("C", PROMPTS[4]))]
            for t in late:
                t.start()
            for _ in range(200):  # bounded: until both wait
                if metric(url, "cblab:num_requests_waiting") == 2:
                    break
                time.sleep(0.05)
            assert metric(url, "cblab:num_requests_waiting") == 2 and metric(url, "cblab:num_requests_running") == 1
            full = httpx.post(url + "/v1/completions", json={"prompt": "Flat", "max_tokens": 2}, timeout=30)
            assert_openai_error(full, 429)
        for t in late:  # A's client has left: A is aborted, its group ends, B and C run
            t.join(60)
        wait_idle(url)
    assert answers == {"B": alone(tiny, PROMPTS[3], 6), "C": alone(tiny, PROMPTS[4], 6)}
    groups = [r.plan.request_ids for r in engine.records if r.plan.admitted]
    assert len(groups) == 2 and len(groups[0]) == 1 and len(groups[1]) == 2, groups
    assert engine.records[0].plan.request_ids == groups[0]  # A's group came first
    a_steps = [r for r in engine.records if r.plan.request_ids == groups[0]]
    assert sorted(a_steps[-1].waiting) == sorted(groups[1])  # they waited through A's group, to its last step
    first_b = min(r.step for r in engine.records if r.plan.request_ids == groups[1])
    assert first_b > max(r.step for r in a_steps)  # and joined only after it
    assert engine.kv.usage().reserved_slots == 0


def test_bad_input_gets_an_openai_error_and_the_static_server_keeps_serving(server):
    url = server[1]
    for path, cases in (("/v1/completions", BAD), ("/v1/chat/completions", CHAT_BAD)):
        for case, (body, status) in cases.items():
            if isinstance(body, bytes):
                r = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
            else:
                r = httpx.post(url + path, json=body, timeout=30)
            assert r.status_code == status, (case, r.text)
            assert_openai_error(r, status)
    assert_still_serving(url)


def test_a_disconnect_mid_stream_frees_the_group_s_kv(tiny, server):
    url = server[1]
    aborted = metric(url, "cblab:request_aborted_total")
    body = {"model": tiny.name, "prompt": PROMPTS[5], "max_tokens": 3000, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert any(next(lines).startswith("data: {") for _ in range(4))
    wait_idle(url)
    assert metric(url, "cblab:request_aborted_total") == aborted + 1


def test_the_dashboard_says_static(server):
    assert httpx.get(server[1] + "/dashboard/state", timeout=10).json()["batching"] == "static"


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(flags))


def test_the_static_flag_builds_a_static_server_and_says_what_it_is():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert "--static" in help_text and "vLLM has no such mode" in help_text
    app = build(parse("--model", "tiny", "--static", "--max-running", "3", "--num-blocks", "64", "--block-size", "8"))
    engine = engine_of(app)
    assert isinstance(engine, StaticServingEngine) and (engine.batch_size, engine.kv.num_slots) == (3, 512)
    with pytest.raises(ConfigError, match="--enable-prefix-caching"):
        build(parse("--model", "tiny", "--static", "--enable-prefix-caching"))
    with pytest.raises(ConfigError, match="--preemption recompute"):
        build(parse("--model", "tiny", "--static", "--preemption", "recompute"))
    with pytest.raises(ConfigError, match="needs an Engine or a StaticServingEngine"):
        build_app(app.state.text_model, object())
