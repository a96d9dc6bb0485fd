"""The OpenAI-compatible server, driven by the official ``openai`` client against a server started here.

The tiny character model (float64, so no greedy token hinges on a near-tie) serves most tests in milliseconds a
step; one test puts SmolLM2 behind the server and compares its answer with Hugging Face ``generate``. Every
server binds 127.0.0.1 on a free port and runs in a thread of this process, so a test can read the engine's
records afterwards (to prove that HTTP clients shared steps); nothing here touches the engine while it serves.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace

import httpx
import pytest
import torch

from cblab_teach import Engine, EngineConfig, SamplingParams
from cblab_teach.errors import ConfigError
from cblab_teach.serve import TextModel, build_app, serve_in_background, tiny_text_model
from cblab_teach.serve.loadgen_run import run_blocking

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.timeout(120)

CONFIG = EngineConfig(max_tokens_per_step=64, prefill_chunk_size=16, block_size=8, num_blocks=512)
PROMPTS = ["Beautiful is better than", "Simple is better", "Errors should never", "Now is better than",
           "Flat is better", "Readability", "In the face of", "There should be one"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> TextModel:
    return tiny_text_model(dtype=torch.float64)


@pytest.fixture(scope="module")
def server(tiny):
    app = build_app(tiny, Engine(tiny.model, CONFIG), max_waiting=64)
    with serve_in_background(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=30)


def alone(tiny: TextModel, prompt: str, max_tokens: int, sampling: SamplingParams | None = None) -> str:
    """What the engine alone, with no server, generates for ``prompt``: the reference every answer must equal."""
    ids = Engine(tiny.model, CONFIG).generate([tiny.encode(prompt)], max_tokens, sampling)[0]
    return tiny.tokenizer.decode(ids)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples in /metrics whose labels include ``labels``."""
    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.findall(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, flags=re.M)
    values = [float(v) for tags, v in found if all(f'{k}="{w}"' in tags for k, w in labels.items())]
    assert values, f"{name} {labels} is not in /metrics"
    return sum(values)


def wait_for(url: str, name: str, want: float, timeout: float = 10.0, **labels: str) -> None:
    """Bounded: until ``name`` reads ``want`` (an outcome is counted in the engine's thread just after the answer)."""
    deadline = time.monotonic() + timeout
    while metric(url, name, **labels) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metric(url, name, **labels) == want, (name, labels)


def wait_idle(url: str, timeout: float = 10.0) -> None:
    """Bounded: the engine has nothing running or waiting and no KV block in use."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(metric(url, f"cblab:{m}") == 0 for m in ("num_requests_running", "num_requests_waiting",
                                                         "kv_cache_usage_perc")):  # fmt: skip
            return
        time.sleep(0.05)
    pytest.fail(f"the server is not idle after {timeout} s: KV usage {metric(url, 'cblab:kv_cache_usage_perc')}")


# -- answers ------------------------------------------------------------------------------------------------
def test_greedy_completion_equals_the_engine_alone_streamed_or_not(tiny, client):
    want = alone(tiny, PROMPTS[0], 24)
    whole = client.completions.create(model=tiny.name, prompt=PROMPTS[0], max_tokens=24, temperature=0)
    assert whole.choices[0].text == want and whole.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=tiny.name, prompt=PROMPTS[0], max_tokens=24, temperature=0,
                                            stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == want
    assert len(chunks) > 1 and chunks[-1].choices[0].finish_reason == "length"


def test_chat_streams_in_openai_s_chunk_format_ending_with_done(tiny, server):
    body = {"model": tiny.name, "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 12,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", server[1] + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == alone(tiny, PROMPTS[1], 12)  # the tiny model's chat "template": the message's text
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": len(PROMPTS[1]), "completion_tokens": 12, "total_tokens": len(PROMPTS[1]) + 12}  # fmt: skip


def test_usage_counts_are_exact(tiny, client):
    r = client.completions.create(model=tiny.name, prompt=PROMPTS[2], max_tokens=7, temperature=0, n=3, seed=1)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (19, 21, 40)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Flat"}]
    r = client.chat.completions.create(model=tiny.name, messages=chat, max_tokens=5, temperature=0)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len("Be brief.\nFlat"), 5)


def test_n_samples_with_a_seed_are_reproducible_and_equal_the_engine_alone(tiny, client):
    def ask():
        r = client.completions.create(model=tiny.name, prompt="The cat ", max_tokens=16, temperature=0.9, n=3,
                                      seed=5)  # fmt: skip
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    first = ask()
    assert ask() == first and len(set(first)) > 1, first
    base = SamplingParams(temperature=0.9, seed=5)  # sample i of a group draws with seed + i
    assert first == [alone(tiny, "The cat ", 16, replace(base, seed=5 + i)) for i in range(3)]


def test_stop_strings_cut_the_text_and_count_the_tokens_up_to_the_stop(tiny, client):
    full = alone(tiny, PROMPTS[0], 24)  # " ugly.\nExplicit is better..."
    cut = full.index("\n")
    r = client.completions.create(model=tiny.name, prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=["\n", "zz"])
    assert r.choices[0].text == full[:cut] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == cut + 1  # one token per character, the newline's included
    streamed = client.completions.create(model=tiny.name, prompt=PROMPTS[0], max_tokens=24, temperature=0,
                                         stop="Explicit", stream=True)  # fmt: skip
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == full[: full.index("Explicit")]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_streams_are_each_correct_and_share_steps(tiny, server, client):
    app, url = server
    first_step = len(app.state.engine_loop.engine.records)

    async def one(aclient, prompt):
        stream = await aclient.completions.create(model=tiny.name, prompt=prompt, max_tokens=40, temperature=0,
                                                  stream=True)  # fmt: skip
        return "".join([c.choices[0].text async for c in stream])

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as aclient:
            return await asyncio.gather(*(one(aclient, p) for p in PROMPTS))

    texts = run_blocking(all_at_once())
    assert texts == [alone(tiny, p, 40) for p in PROMPTS]
    wait_idle(url)
    steps = app.state.engine_loop.engine.records[first_step:]
    widest = max(len({c.request_id for c in s.plan.chunks}) for s in steps)
    assert widest >= 4, f"at most {widest} of {len(PROMPTS)} HTTP requests ever shared a step"
    assert not app.state.engine_loop.engine.requests  # every answered request forgotten: nothing grows


def test_preemption_and_prefix_caching_behind_the_server_keep_every_answer_exact(tiny):
    """A pool too small for everyone at once: the engine preempts and recomputes, clients see nothing of it."""
    tight = replace(CONFIG, num_blocks=24, preemption="recompute", enable_prefix_caching=True)
    engine = Engine(tiny.model, tight)
    prompts = [f"{p} and {p}" for p in PROMPTS[:6]]
    with serve_in_background(build_app(tiny, engine)) as url:

        async def all_at_once():
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
                rs = await asyncio.gather(*(c.completions.create(model=tiny.name, prompt=p, max_tokens=30,
                                                                 temperature=0) for p in prompts))  # fmt: skip
                return [r.choices[0].text for r in rs]

        texts = run_blocking(all_at_once())
        wait_idle(url)
    assert texts == [alone(tiny, p, 30) for p in prompts]
    assert engine.stats.preemptions > 0, "the pool was meant to be too small for every request at once"


def test_models_health_and_metrics(tiny, server, client):
    assert [m.id for m in client.models.list().data] == [tiny.name]
    url = server[1]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    text = httpx.get(url + "/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "request_success_total",
                 "request_aborted_total", "time_to_first_token_seconds_bucket",
                 "time_per_output_token_seconds_bucket", "e2e_request_latency_seconds_bucket"):  # fmt: skip
        assert f"cblab:{name}" in text, name
    before = [metric(url, "cblab:time_to_first_token_seconds_count"),
              metric(url, "cblab:request_success_total", finished_reason="length"),
              metric(url, "cblab:request_success_total", finished_reason="stop"),
              metric(url, "cblab:generation_tokens_total")]  # fmt: skip
    client.completions.create(model=tiny.name, prompt="Flat", max_tokens=3, temperature=0)
    client.completions.create(model=tiny.name, prompt=PROMPTS[0], max_tokens=20, temperature=0, stop="\n")
    wait_idle(url)  # the stop string's finish reaches the engine thread just after the answer
    wait_for(url, "cblab:request_success_total", before[2] + 1, finished_reason="stop")
    assert metric(url, "cblab:time_to_first_token_seconds_count") == before[0] + 2
    assert metric(url, "cblab:request_success_total", finished_reason="length") == before[1] + 1
    # the stopped request's tokens are counted as the engine generated them: up to the stop, maybe one more step
    assert metric(url, "cblab:generation_tokens_total") >= before[3] + 3 + 7


def test_the_success_label_is_the_finish_reason_the_client_was_told(tiny, client, server):
    """The token that reaches max_tokens also completes the stop string: the engine ended the request for its
    length, the client is told "stop", and /metrics must say what the client was told."""
    url = server[1]
    full = alone(tiny, PROMPTS[0], 24)
    cut = full.index("\n")
    stop, length = (metric(url, "cblab:request_success_total", finished_reason=r) for r in ("stop", "length"))
    for stream in (False, True):
        r = client.completions.create(model=tiny.name, prompt=PROMPTS[0], max_tokens=cut + 1, temperature=0,
                                      stop="\n", stream=stream)  # fmt: skip
        choices = [c.choices[0] for c in r] if stream else r.choices
        assert "".join(c.text for c in choices) == full[:cut] and choices[-1].finish_reason == "stop"
    wait_for(url, "cblab:request_success_total", stop + 2, finished_reason="stop")
    assert metric(url, "cblab:request_success_total", finished_reason="length") == length
    r = client.completions.create(model=tiny.name, prompt=PROMPTS[0], max_tokens=cut, temperature=0, stop="\n")
    assert r.choices[0].finish_reason == "length"  # one token short of the stop: a length, and counted so
    wait_for(url, "cblab:request_success_total", length + 1, finished_reason="length")


# -- disconnects free the KV ----------------------------------------------------------------------------------
def test_a_client_that_leaves_mid_stream_is_aborted_and_its_kv_freed(tiny, server):
    url = server[1]
    aborted = metric(url, "cblab:request_aborted_total")
    body = {"model": tiny.name, "prompt": PROMPTS[4], "max_tokens": 3000, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few tokens in: the request holds KV now
    assert any(line.startswith("data: {") for line in got)
    wait_idle(url)
    assert metric(url, "cblab:request_aborted_total") == aborted + 1


def test_a_non_streaming_client_that_times_out_is_aborted_too(tiny, server):
    url = server[1]
    aborted = metric(url, "cblab:request_aborted_total")
    body = {"model": tiny.name, "prompt": PROMPTS[5], "max_tokens": 3000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=body, timeout=0.5)
    wait_idle(url)
    assert metric(url, "cblab:request_aborted_total") == aborted + 1


# -- bad input: an OpenAI-shaped error, and the server keeps serving -------------------------------------------
BAD = {
    "malformed JSON": (b'{"prompt": "Flat", ', 400),
    "not an object": ([1, 2], 400),
    "missing prompt": ({"max_tokens": 3}, 400),
    "wrong-typed max_tokens": ({"prompt": "Flat", "max_tokens": "3"}, 400),
    "wrong-typed temperature": ({"prompt": "Flat", "temperature": "hot"}, 400),
    "bool for n": ({"prompt": "Flat", "n": True}, 400),
    "unknown model": ({"prompt": "Flat", "model": "gpt-4o"}, 404),
    "max_tokens 0": ({"prompt": "Flat", "max_tokens": 0}, 400),
    "past the context": ({"prompt": "Flat", "max_tokens": 4093}, 400),
    "negative temperature": ({"prompt": "Flat", "temperature": -1}, 400),
    "top_p 0": ({"prompt": "Flat", "top_p": 0}, 400),
    "n 0": ({"prompt": "Flat", "n": 0}, 400),
    "empty prompt": ({"prompt": ""}, 400),
    "characters outside the vocabulary": ({"prompt": "café"}, 400),
    "empty stop string": ({"prompt": "Flat", "stop": [""]}, 400),
}
CHAT_BAD = {
    "no messages": ({"messages": []}, 400),
    "messages not a list": ({"messages": "hello"}, 400),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400),
    "content not a string": ({"messages": [{"role": "user", "content": 5}]}, 400),
}


def assert_openai_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"], error
    assert "Traceback" not in response.text


def assert_still_serving(url: str) -> None:
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    ok = httpx.post(url + "/v1/completions", json={"prompt": "Flat", "max_tokens": 2, "temperature": 0}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("path,case", [("/v1/completions", k) for k in BAD] + [("/v1/chat/completions", k)
                                                                            for k in CHAT_BAD])  # fmt: skip
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(server, path, case):
    body, status = (BAD if path == "/v1/completions" else CHAT_BAD)[case]
    url = server[1]
    if isinstance(body, bytes):
        r = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = httpx.post(url + path, json=body, timeout=30)
    assert_openai_error(r, status)
    assert_still_serving(url)


def test_the_official_client_raises_its_own_exceptions(tiny, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="Flat", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_position"):
        client.completions.create(model=tiny.name, prompt="Flat", max_tokens=10_000)


def test_a_body_over_the_limit_gets_413_declared_or_streamed(server):
    url = server[1]
    huge = json.dumps({"prompt": "a" * (2 << 20)}).encode()
    assert_openai_error(httpx.post(url + "/v1/completions", content=huge, timeout=30), 413)

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(40):
            yield b"a" * (64 << 10)

    assert_openai_error(httpx.post(url + "/v1/completions", content=chunks(), timeout=30), 413)
    assert_openai_error(httpx.get(url + "/no/such/route", timeout=10), 404)
    assert_still_serving(url)


def test_a_full_waiting_queue_gets_429_and_the_server_recovers(tiny):
    one_at_a_time = replace(CONFIG, max_running=1)
    app = build_app(tiny, Engine(tiny.model, one_at_a_time), max_waiting=1)
    body = {"prompt": "Flat", "max_tokens": 3000, "temperature": 0, "stream": True}
    with serve_in_background(app) as url:
        with httpx.Client(base_url=url, timeout=30) as a, httpx.Client(base_url=url, timeout=30) as b:
            with a.stream("POST", "/v1/completions", json=body) as running:
                lines = running.iter_lines()  # kept: a dropped iterator closes the response (a disconnect)
                next(lines)  # admitted and running: it holds the only running slot
                with b.stream("POST", "/v1/completions", json=body) as waiting:
                    assert waiting.status_code == 200  # accepted: it waits behind the first
                    refused = httpx.post(url + "/v1/completions", json={"prompt": "Flat", "max_tokens": 2}, timeout=30)
                    assert_openai_error(refused, 429)
                    assert refused.headers["retry-after"] == "1"
                    with pytest.raises(openai.RateLimitError):
                        openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).completions.create(
                            model=tiny.name, prompt="Flat", max_tokens=2)  # fmt: skip
        wait_idle(url)
        assert metric(url, "cblab:request_aborted_total") == 2
        assert_still_serving(url)
    with pytest.raises(ConfigError):
        build_app(tiny, Engine(tiny.model, CONFIG), max_waiting=0)


def test_an_engine_failure_ends_the_requests_in_flight_and_the_server_goes_on(tiny):
    """A bug in a step (planted here) fails the requests it was running, as a 500 or an error event in the stream;
    their KV is freed, and the next requests are served."""
    engine = Engine(tiny.model, CONFIG)
    real_step, calls = engine.step, []

    def failing_step():
        calls.append(1)
        if len(calls) in (2, 5):  # mid-request, once for each client below
            raise RuntimeError("planted")
        return real_step()

    engine.step = failing_step
    with serve_in_background(build_app(tiny, engine)) as url:
        r = httpx.post(url + "/v1/completions", json={"prompt": "Flat", "max_tokens": 20}, timeout=30)
        assert_openai_error(r, 500)
        assert "planted" in r.json()["error"]["message"]
        body = {"prompt": "Flat", "max_tokens": 20, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as s:
            lines = [line for line in s.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and "planted" in json.loads(lines[-2][6:])["error"]["message"]
        wait_idle(url)
        assert_still_serving(url)


# -- the real model -----------------------------------------------------------------------------------------
def test_smollm2_behind_the_server_answers_as_hugging_face_generate(smollm2):
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    text_model = TextModel(smollm2.name, smollm2.model, smollm2.tokenizer, smollm2.eos_token_id, smollm2)
    engine = Engine(smollm2.model, EngineConfig(max_tokens_per_step=128, prefill_chunk_size=64))
    with serve_in_background(build_app(text_model, engine)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(model=smollm2.name, messages=chat, max_tokens=12, temperature=0)
    ids = torch.tensor([smollm2.encode_chat(chat)])
    hf = smollm2.hf_model().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                     eos_token_id=smollm2.eos_token_id, pad_token_id=smollm2.eos_token_id)  # fmt: skip
    want = hf[0, ids.shape[1] :].tolist()
    assert r.choices[0].message.content == smollm2.decode(want)
    assert r.usage.prompt_tokens == ids.shape[1] and r.usage.completion_tokens == len(want)


def test_the_dashboard_state_is_the_engine_s_steps_and_requests(tiny, server, client):
    """What /dashboard draws, recomputed from the engine's own records: decode and prefill tokens per step."""
    app, url = server
    for prompt in PROMPTS[:3]:
        client.completions.create(model=tiny.name, prompt=prompt, max_tokens=6, temperature=0)
    wait_idle(url)
    state = httpx.get(url + "/dashboard/state", timeout=10).json()
    by_step = {r.step: r for r in app.state.engine_loop.engine.records}
    assert state["model"] == tiny.name and len(state["steps"]) >= 6
    for shown in state["steps"]:
        record = by_step[shown["step"]]
        decode = sum(c.length for c in record.plan.chunks if c.kind == "decode")
        assert (shown["decode"], shown["prefill"]) == (decode, record.used - decode)
        assert shown["decode"] + shown["prefill"] <= shown["budget"] == record.plan.budget
    last = state["requests"][0]  # newest first
    assert last["output_tokens"] == 6 and last["finish_reason"] == "length" and last["ttft_ms"] > 0
    page = httpx.get(url + "/dashboard", timeout=10).text
    assert '<script src="/dashboard/plotly.min.js">' in page and "http" not in page.split("<script>")[1]
    js = httpx.get(url + "/dashboard/plotly.min.js", timeout=30)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and len(js.content) > 1e6
