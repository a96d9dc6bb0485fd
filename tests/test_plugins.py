"""Plugins: every hook is really called (counts, order, arguments checked against the step records),
a failing plugin is named and leaves the engine usable, and the built-in plugins do what they claim."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from cblab_teach import Engine, EngineConfig, ModelConfig, PluginError, Scheduler, TinyLM
from cblab_teach.attention.masked import expand_kv_heads
from cblab_teach.attention.paged import gather_from_block_table
from cblab_teach.core.request import Request, RequestState
from cblab_teach.errors import ConfigError
from cblab_teach.model.layers import RotaryEmbedding
from cblab_teach.monitoring import MetricsCollector
from cblab_teach.plugins import (
    AdaptiveBatchSizePlugin,
    AttentionPlugin,
    CachePlugin,
    Int8KVPool,
    KVQuantizationPlugin,
    LoggingPlugin,
    PriorityPlugin,
    SchedulerPlugin,
    SlidingWindowPlugin,
)
from cblab_teach.plugins.kv_quant import dequantize, quantize, teacher_forced_logits
from cblab_teach.workloads import make_workload, serve_with_urgent_arrivals

from .helpers import run_alone

CFG = dict(max_tokens_per_step=12, prefill_chunk_size=5, block_size=4, num_blocks=64)


class Recorder(SchedulerPlugin, AttentionPlugin, CachePlugin):
    """Logs every hook call with what it was given."""

    def __init__(self, log: list, tag: str = "") -> None:
        self.log = log
        self.tag = tag

    @property
    def name(self) -> str:
        return f"Recorder{self.tag}"

    def before_step(self, engine):
        self.log.append((self.tag, "before_step", len(engine.records)))

    def after_step(self, engine, record):
        self.log.append((self.tag, "after_step", record))

    def on_request_completion(self, engine, request):
        self.log.append((self.tag, "on_request_completion", request))

    def attend(self, layer, q, ctx, default):
        self.log.append((self.tag, "attend", layer, q.shape[0], list(ctx.batch.request_ids)))
        return default(layer, q, ctx)

    def before_append(self, layer, k, v, batch):
        self.log.append((self.tag, "before_append", layer, k.shape[0], list(batch.request_ids)))
        return k, v

    def after_append(self, layer, k, v, batch):
        self.log.append((self.tag, "after_append", layer, k.shape[0], list(batch.request_ids)))


def _run(model, workload, plugins, **cfg):
    engine = Engine(model, EngineConfig(**{**CFG, **cfg}), plugins=plugins)
    ids = [engine.add_request(p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    engine.run()
    return engine, ids


def _split_by_step(log):
    steps, current = [], None
    for entry in log:
        if entry[1] == "before_step":
            current = []
            steps.append(current)
        current.append(entry)
    return steps


def test_every_hook_fires_in_order_with_the_step_records(model64, workload):
    log: list = []
    engine, ids = _run(model64, workload, [Recorder(log)])
    layers = model64.config.num_layers
    steps = _split_by_step(log)
    assert len(steps) == len(engine.records) > 1
    for i, (calls, record) in enumerate(zip(steps, engine.records)):
        n_tokens = record.plan.used
        rids = record.plan.request_ids
        assert calls[0] == ("", "before_step", i)  # before planning: the record does not exist yet
        forward = calls[1 : 1 + 3 * layers]
        expected = []
        for layer in range(layers):  # per layer: K/V stored first, then attention reads it
            expected += [
                ("", "before_append", layer, n_tokens, rids),
                ("", "after_append", layer, n_tokens, rids),
                ("", "attend", layer, n_tokens, rids),
            ]
        assert forward == expected
        completions = calls[1 + 3 * layers : -1]
        assert [c[1] for c in completions] == ["on_request_completion"] * len(record.finished)
        assert [c[2].request_id for c in completions] == record.finished
        assert all(c[2].state is RequestState.FINISHED for c in completions)
        assert calls[-1][1] == "after_step" and calls[-1][2] is record
    completed = [e[2].request_id for e in log if e[1] == "on_request_completion"]
    assert sorted(completed) == sorted(ids)  # each request exactly once


def test_cache_plugin_sees_every_appended_token(model64, workload):
    seen: dict[int, int] = {}

    class Counter(CachePlugin):
        def after_append(self, layer, k, v, batch):
            assert k.shape == v.shape
            seen[layer] = seen.get(layer, 0) + k.shape[0]

    engine, _ = _run(model64, workload, [Counter()])
    total = sum(r.plan.used for r in engine.records)
    assert seen == {layer: total for layer in range(model64.config.num_layers)}
    # every prompt token and every generated token but the last is stored once
    assert total == sum(len(p) + n - 1 for p, n in zip(workload.prompts, workload.max_new_tokens))


def test_plugins_run_in_registration_order(model64, workload):
    log: list = []
    engine, _ = _run(model64, workload, [Recorder(log, "a"), Recorder(log, "b")])
    befores = [e[0] for e in log if e[1] == "before_step"]
    assert befores == ["a", "b"] * len(engine.records)
    appends = [e[0] for e in log if e[1] == "before_append"]
    assert appends == ["a", "b"] * (len(engine.records) * model64.config.num_layers)
    # attention plugins nest: the first registered wraps the default, the last is called first
    attends = [e[0] for e in log if e[1] == "attend"]
    assert attends == ["b", "a"] * (len(engine.records) * model64.config.num_layers)


def test_add_plugin_after_construction_is_called_too(model64, workload):
    log: list = []
    engine = Engine(model64, EngineConfig(**CFG))
    engine.add_plugin(Recorder(log))
    engine.generate(workload.prompts, workload.max_new_tokens)
    assert sum(e[1] == "after_step" for e in log) == len(engine.records)
    with pytest.raises(PluginError, match="not a SchedulerPlugin"):
        engine.add_plugin(object())


class SdpaAttention(AttentionPlugin):
    """Swap the engine's attention for torch's scaled_dot_product_attention, request by request."""

    def attend(self, layer, q, ctx, default):
        batch = ctx.batch
        k, v = gather_from_block_table(ctx.cache, layer, batch)
        out = torch.empty_like(q)
        k_start = 0
        for i in range(len(batch.request_ids)):
            a, b = int(batch.cu_seqlens[i]), int(batch.cu_seqlens[i + 1])
            n_ctx = int(batch.context_lens[i])
            ki = expand_kv_heads(k[k_start : k_start + n_ctx], q.shape[1])
            vi = expand_kv_heads(v[k_start : k_start + n_ctx], q.shape[1])
            allowed = torch.arange(n_ctx)[None, :] <= batch.positions[a:b, None]
            o = torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1), attn_mask=allowed
            )
            out[a:b] = o.transpose(0, 1)
            k_start += n_ctx
        return out


class ScaledAttention(AttentionPlugin):
    def attend(self, layer, q, ctx, default):
        return default(layer, q, ctx) * 0.5


def test_attention_plugin_replaces_attention(model64, workload):
    alone = [run_alone(model64, p, n, **CFG) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    engine, ids = _run(model64, workload, [SdpaAttention()])
    assert [engine.output(i) for i in ids] == alone  # a different kernel, the same model
    engine, ids = _run(model64, workload, [ScaledAttention()])
    assert [engine.output(i) for i in ids] != alone  # the hook's result is what the model uses


class FailOnce(SchedulerPlugin, AttentionPlugin, CachePlugin):
    def __init__(self, hook: str, at_step: int) -> None:
        self.hook = hook
        self.at_step = at_step
        self.step = -1
        self.fired = False

    def _maybe_fail(self, hook: str) -> None:
        if hook == self.hook and self.step == self.at_step and not self.fired:
            self.fired = True
            raise RuntimeError("boom")

    def before_step(self, engine):
        self.step = len(engine.records)
        self._maybe_fail("before_step")

    def after_step(self, engine, record):
        self._maybe_fail("after_step")

    def attend(self, layer, q, ctx, default):
        if layer == 1:
            self._maybe_fail("attend")
        return default(layer, q, ctx)

    def before_append(self, layer, k, v, batch):
        if layer == 1:
            self._maybe_fail("before_append")
        return k, v

    def after_append(self, layer, k, v, batch):
        self._maybe_fail("after_append")

    def on_request_completion(self, engine, request):
        self._maybe_fail("on_request_completion")


@pytest.mark.parametrize(
    "hook", ["before_step", "after_step", "attend", "before_append", "after_append", "on_request_completion"]
)
def test_a_failing_plugin_is_named_and_the_engine_carries_on(model64, workload, hook):
    alone = [run_alone(model64, p, n, **CFG) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    plugin = FailOnce(hook, at_step=2)
    engine = Engine(model64, EngineConfig(**CFG), plugins=[plugin])
    ids = [engine.add_request(p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    if hook == "on_request_completion":  # fail at the first step that finishes a request
        probe = Engine(model64, EngineConfig(**CFG))
        for p, n in zip(workload.prompts, workload.max_new_tokens):
            probe.add_request(p, n)
        plugin.at_step = next(r.step for r in probe.run() if r.finished)
    for _ in range(plugin.at_step):
        engine.step()
    with pytest.raises(PluginError, match=rf"FailOnce\.{hook}\(\) raised RuntimeError: boom"):
        engine.step()
    engine.run()  # the next steps work ...
    assert [engine.output(i) for i in ids] == alone  # ... and nothing was computed twice or lost
    assert not engine.kv.lengths  # every request's KV was given back


def test_logging_plugin_logs_one_line_per_step(model64, workload, caplog):
    with caplog.at_level(logging.INFO, logger="cblab_teach.engine"):
        engine, ids = _run(model64, workload, [LoggingPlugin()])
    step_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(step_lines) == len(engine.records)
    first = engine.records[0].plan
    assert step_lines[0].startswith(f"step 0: budget {first.budget}, decode 0, prefill {first.prefill_tokens}")
    assert sum("finished:" in r.getMessage() for r in caplog.records) == len(ids)


# -- priority ------------------------------------------------------------------------------------


def test_reserved_tokens_keep_room_for_urgent_requests():
    """The scheduler change behind PriorityPlugin: others cannot eat the reserved slice."""
    low = [Request(i, list(range(1, 41)), 4, priority=5, arrival=i) for i in range(3)]
    urgent = Request(9, [1, 2, 3, 4, 5, 6], 4, priority=0, arrival=9)
    for r in low:
        r.num_computed, r.state = 8, RequestState.PREFILL
    sched = Scheduler(16, 8, policy="priority")
    plain = sched.plan(low, [urgent])
    assert urgent.request_id not in plain.admitted  # running prefills ate the budget
    sched.reserved_tokens, sched.reserved_priority = 6, 0
    plan = sched.plan(low, [urgent])
    assert plan.admitted == [urgent.request_id]
    by_id = {c.request_id: c.length for c in plan.chunks}
    assert by_id[urgent.request_id] == 6
    assert sum(n for rid, n in by_id.items() if rid != urgent.request_id) == 16 - 6
    assert plan.used == 16


def _arrivals_run(model, plugins, low, high):
    engine = Engine(model, EngineConfig(max_tokens_per_step=32, prefill_chunk_size=16), plugins=plugins)
    return engine, serve_with_urgent_arrivals(engine, low, high, every=3)


def test_priority_plugin_cuts_urgent_ttft_and_keeps_throughput(model64):
    low = make_workload(10, (40, 70), (6, 12), vocab_size=97, seed=5)
    high = make_workload(5, (4, 10), (3, 6), vocab_size=97, seed=6)
    plugin = PriorityPlugin(reserve_fraction=0.5)
    base, urgent = _arrivals_run(model64, [], low, high)
    prio, urgent_p = _arrivals_run(model64, [plugin], low, high)
    assert urgent == urgent_p

    def mean_ttft_steps(engine, ids):
        m = {r.request_id: r for r in MetricsCollector.from_engine(engine).request_metrics()}
        return sum(m[i].ttft_steps for i in ids) / len(ids)

    assert mean_ttft_steps(prio, urgent) < 0.5 * mean_ttft_steps(base, urgent)
    assert len(prio.records) <= 1.15 * len(base.records)  # same work, nearly as many tokens per step
    assert {i: prio.output(i) for i in prio.requests} == {i: base.output(i) for i in base.requests}
    for record, reserved in zip(prio.records, plugin.reserved_history):
        others = sum(c.length for c in record.plan.chunks if prio.requests[c.request_id].priority > 0)
        assert reserved <= 0.5 * record.budget and others <= record.budget - reserved


def test_priority_plugin_reserves_nothing_without_urgent_work(model64, workload):
    plugin = PriorityPlugin(0.5)
    engine, _ = _run(model64, workload, [plugin])  # every request has priority 0 ... so all urgent
    plain, _ = _run(model64, workload, [])
    assert len(engine.records) == len(plain.records)
    low_only = Engine(model64, EngineConfig(**CFG), plugins=[plugin2 := PriorityPlugin(0.5)])
    for p, n in zip(workload.prompts, workload.max_new_tokens):
        low_only.add_request(p, n, priority=3)
    low_only.run()
    assert set(plugin2.reserved_history) == {0}
    assert len(low_only.records) == len(plain.records)
    with pytest.raises(ConfigError, match="reserve_fraction"):
        PriorityPlugin(1.0)


# -- adaptive batch size ------------------------------------------------------------------------


def _synthetic_step_time(record) -> float:
    return 0.001 + 0.0002 * record.plan.used  # seconds: fixed overhead plus a cost per token


@pytest.mark.parametrize("start", [4, 96])
def test_adaptive_budget_converges_to_the_target_step_time(model64, start):
    target = 0.005  # the budget whose step takes 5 ms: (0.005 - 0.001) / 0.0002 = 20 tokens
    plugin = AdaptiveBatchSizePlugin(target, step_time=_synthetic_step_time)
    engine = Engine(model64, EngineConfig(max_tokens_per_step=start, prefill_chunk_size=16, num_blocks=512))
    engine.add_plugin(plugin)
    w = make_workload(24, (20, 40), (20, 30), vocab_size=97, seed=2)
    for p, n in zip(w.prompts, w.max_new_tokens):
        engine.add_request(p, n)
    for _ in range(12):
        engine.step()
    ideal = (target - 0.001) / 0.0002
    assert abs(engine.budget - ideal) <= 1
    loaded = [_synthetic_step_time(r) for r in engine.records[8:12]]
    assert all(abs(t - target) <= 0.05 * target for t in loaded)
    assert all(r.plan.used <= r.plan.budget == b for r, (b, _) in zip(engine.records, plugin.history))


def test_adaptive_budget_does_not_grow_when_idle(model64):
    plugin = AdaptiveBatchSizePlugin(0.010, step_time=_synthetic_step_time)
    engine = Engine(model64, EngineConfig(max_tokens_per_step=8), plugins=[plugin])
    engine.generate([[1, 2, 3]], 6)  # one request: steps of 1 token are fast, but say nothing about 16
    assert engine.budget == 8
    with pytest.raises(ConfigError, match="target_step_s"):
        AdaptiveBatchSizePlugin(0)


def test_adaptive_budget_measures_wall_time_with_an_injected_clock(model64):
    ticks = iter(range(1000))
    plugin = AdaptiveBatchSizePlugin(2.0, clock=lambda: float(next(ticks)) * 4.0)  # every step "takes" 4 s
    engine = Engine(model64, EngineConfig(max_tokens_per_step=16), plugins=[plugin])
    for i in range(6):
        engine.add_request([1 + i, 2, 3, 4, 5, 6, 7, 8, 9], 8)
    engine.step()
    assert plugin.history == [(16, 4.0)] and engine.budget == 8  # twice too slow: halve


# -- int8 KV ---------------------------------------------------------------------------------------


def test_quantize_round_trip_error_is_at_most_half_a_step():
    x = torch.randn(50, 3, 16, dtype=torch.float64) * torch.logspace(-3, 2, 50, dtype=torch.float64)[:, None, None]
    q, s = quantize(x)
    assert q.dtype == torch.int8 and s.shape == (50, 3)
    err = (dequantize(q, s, torch.float64) - x).abs()
    assert torch.all(err <= s.double()[..., None] / 2 + 1e-12)
    assert torch.all(q.abs().amax(-1) >= 126)  # the range is used: scales follow each token and head
    zero_q, zero_s = quantize(torch.zeros(2, 1, 4))
    assert torch.all(dequantize(zero_q, zero_s, torch.float32) == 0)


@pytest.fixture(scope="module")
def model32():
    return TinyLM(ModelConfig(vocab_size=97, hidden_size=64, num_heads=4, intermediate_size=96), seed=2)


def test_int8_kv_really_shrinks_the_pool(model32):
    engine = Engine(model32, EngineConfig(num_blocks=32, block_size=8), plugins=[plugin := KVQuantizationPlugin()])
    cfg = model32.config
    float_bytes = 2 * cfg.num_layers * 32 * 8 * cfg.kv_heads * cfg.head_dim * 4
    engine.generate([[1, 2, 3, 4, 5]], 4)
    assert isinstance(engine.kv.k, Int8KVPool) and isinstance(engine.kv.v, Int8KVPool)
    held = sum(t.untyped_storage().nbytes() for pool in (engine.kv.k, engine.kv.v) for t in vars(pool).values()
               if isinstance(t, torch.Tensor))  # fmt: skip
    assert plugin.float_bytes == float_bytes
    assert float_bytes / held >= 3.5 and plugin.compression == float_bytes / held
    assert engine.records[-1].kv.bytes_per_slot * engine.kv.num_slots == held


def test_int8_kv_keeps_outputs_close(model32):
    w = make_workload(8, (5, 40), (8, 16), vocab_size=97, seed=4)
    cfg = EngineConfig(max_tokens_per_step=64, prefill_chunk_size=32)
    plain = Engine(model32, cfg).generate(w.prompts, w.max_new_tokens)
    quant = Engine(model32, cfg, plugins=[KVQuantizationPlugin()]).generate(w.prompts, w.max_new_tokens)
    total = sum(map(len, plain))
    agree = sum(a == b for p, q in zip(plain, quant) for a, b in zip(p, q))
    assert agree / total >= 0.9
    # teacher-forced: the same prefill through both pools, logits compared position by position
    forced = EngineConfig(max_tokens_per_step=256, prefill_chunk_size=64)
    logits = [teacher_forced_logits(model32, forced, w.prompts[:3], quantized) for quantized in (False, True)]
    rel = (logits[1] - logits[0]).norm() / logits[0].norm()
    assert 0 < rel < 0.02  # changed (the store really is int8), but only a little


@pytest.mark.parametrize("cfg", [dict(kv_layout="dense"), dict(kv_read="flatten"), dict(attention="ragged")])
def test_int8_kv_works_with_every_layout_and_read_path(model32, cfg):
    w = make_workload(5, (3, 20), (3, 8), vocab_size=97, seed=7)
    paged = Engine(model32, EngineConfig(**CFG), plugins=[KVQuantizationPlugin()]).generate(w.prompts, w.max_new_tokens)
    other = Engine(model32, EngineConfig(**CFG, **cfg), plugins=[KVQuantizationPlugin()])
    assert other.generate(w.prompts, w.max_new_tokens) == paged  # quantization depends on the token, not the slot


def test_int8_kv_added_mid_run_keeps_what_is_stored(model32):
    w = make_workload(3, (10, 20), (6, 8), vocab_size=97, seed=8)
    engine = Engine(model32, EngineConfig(**CFG))
    ids = [engine.add_request(p, n) for p, n in zip(w.prompts, w.max_new_tokens)]
    for _ in range(4):
        engine.step()
    k_before = engine.kv.gather(0, ids[0])[0].clone()
    engine.add_plugin(plugin := KVQuantizationPlugin())
    engine.step()
    assert plugin.installed_on is engine.kv
    k_after = engine.kv.gather(0, ids[0])[0][: len(k_before)]
    assert torch.allclose(k_after, k_before, atol=float(k_before.abs().max()) / 127)
    engine.run()
    assert all(len(engine.output(i)) == n for i, n in zip(ids, w.max_new_tokens))
    with pytest.raises(PluginError, match="already quantized"):
        KVQuantizationPlugin().install(engine.kv)


# -- sliding window / attention sink ---------------------------------------------------------------


@torch.no_grad()
def windowed_reference(model: TinyLM, prompt: list[int], n: int, window: int, sink: int) -> list[int]:
    """Brute force: recompute the whole sequence every token, no cache, with the window mask."""
    cfg = model.config
    ids = list(prompt)
    for _ in range(n):
        t = len(ids)
        pos = torch.arange(t)
        cos, sin = model.rotary.cos_sin(pos, model.dtype)
        x = model.embed_tokens(torch.tensor(ids))
        allowed = (pos[None, :] <= pos[:, None]) & ((pos[None, :] < sink) | (pos[:, None] - pos[None, :] < window))
        for block in model.layers:
            h, attn = block.input_layernorm(x), block.self_attn
            q = RotaryEmbedding.apply(attn.q_proj(h).view(t, cfg.num_heads, cfg.head_dim), cos, sin)
            k = RotaryEmbedding.apply(attn.k_proj(h).view(t, cfg.kv_heads, cfg.head_dim), cos, sin)
            v = attn.v_proj(h).view(t, cfg.kv_heads, cfg.head_dim)
            k, v = expand_kv_heads(k, cfg.num_heads), expand_kv_heads(v, cfg.num_heads)
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(cfg.head_dim)
            probs = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1)
            out = torch.einsum("hqk,khd->qhd", probs, v).reshape(t, -1)
            x = x + attn.o_proj(out)
            x = x + block.mlp(block.post_attention_layernorm(x))
        ids.append(int(model.lm_head(model.norm(x[-1])).argmax()))
    return ids[len(prompt) :]


def test_sliding_window_matches_a_brute_force_reference(model64, workload):
    plugin = SlidingWindowPlugin(window=6, sink=2)
    engine, ids = _run(model64, workload, [plugin])
    for i, p, n in zip(ids, workload.prompts, workload.max_new_tokens):
        assert engine.output(i) == windowed_reference(model64, p, n, 6, 2)
    assert plugin.masked_keys > 0
    full = [run_alone(model64, p, n, **CFG) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    assert [engine.output(i) for i in ids] != full  # eviction changes what long requests see


def test_a_window_longer_than_every_sequence_changes_nothing(model64, workload):
    longest = max(len(p) + n for p, n in zip(workload.prompts, workload.max_new_tokens))
    plugin = SlidingWindowPlugin(window=longest, sink=0)
    engine, ids = _run(model64, workload, [plugin])
    plain, plain_ids = _run(model64, workload, [])
    assert [engine.output(i) for i in ids] == [plain.output(i) for i in plain_ids]
    assert plugin.masked_keys == 0
    assert plugin.evicted_tokens(longest) == 1 and SlidingWindowPlugin(8, 4).evicted_tokens(100) == 89
    with pytest.raises(ConfigError, match="window"):
        SlidingWindowPlugin(0)


def test_attention_plugins_stay_with_their_engine(model64, workload):
    """Engines may share a model: one engine's attention plugin must not change another's outputs."""
    alone = [run_alone(model64, p, n, **CFG) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    hooked = Engine(model64, EngineConfig(**CFG), plugins=[ScaledAttention()])
    plain = Engine(model64, EngineConfig(**CFG))
    ids = [
        (hooked.add_request(p, n), plain.add_request(p, n)) for p, n in zip(workload.prompts, workload.max_new_tokens)
    ]
    while plain.has_unfinished() or hooked.has_unfinished():  # interleave the two engines' steps
        for engine in (hooked, plain):
            if engine.has_unfinished():
                engine.step()
    assert [plain.output(b) for _, b in ids] == alone
    assert model64.attention_hook is None


@pytest.mark.parametrize("cfg", [dict(), dict(kv_read="flatten"), dict(preemption=True, num_blocks=18)])
def test_sliding_window_gives_evicted_blocks_back(model64, cfg):
    prompts, lengths = [list(range(1, 30)), list(range(40, 50))], [40, 20]
    settings = {**dict(max_tokens_per_step=16, prefill_chunk_size=8, block_size=4, num_blocks=64), **cfg}
    keep = SlidingWindowPlugin(window=8, sink=4, release=False)
    free = SlidingWindowPlugin(window=8, sink=4)
    kept_engine = Engine(model64, EngineConfig(**settings), plugins=[keep])
    freed_engine = Engine(model64, EngineConfig(**settings), plugins=[free])
    expected = [windowed_reference(model64, p, n, 8, 4) for p, n in zip(prompts, lengths)]
    assert kept_engine.generate(prompts, lengths) == expected
    if cfg.get("preemption"):
        assert kept_engine.stats.preemptions > 0  # without eviction the pool is too small for both
    ids = [freed_engine.add_request(p, n) for p, n in zip(prompts, lengths)]
    while freed_engine.has_unfinished():
        freed_engine.step()
        for table in freed_engine.kv.block_tables.values():  # after eviction: the sink block + the window's blocks
            assert len([b for b in table if b != free.null_block]) <= 1 + 3
    assert [freed_engine.output(i) for i in ids] == expected  # freed blocks are never read
    assert free.released_blocks > 0
    peak = {e: max(r.kv.reserved_slots for r in e.records) for e in (kept_engine, freed_engine)}
    assert peak[freed_engine] < peak[kept_engine]
    kv = freed_engine.kv  # all done: every block is free again but the null block, held once by the plugin
    assert kv.ref_counts[free.null_block] == 1
    assert sorted(kv.free_blocks + [free.null_block]) == list(range(settings["num_blocks"]))
