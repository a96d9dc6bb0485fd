"""Monitoring: metrics recomputed independently from the engine's timestamps, memory profiles that
match tensor sizes computed by hand, and a leak detector that tells a leaking run from a clean one."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from cblab_teach import Engine, EngineConfig, StaticBatchingEngine
from cblab_teach.monitoring import (
    DetailedMemoryProfiler,
    MemoryLeakDetector,
    MemoryProfiler,
    MetricsCollector,
    MonitoringError,
    percentile,
    reachable_tensor_bytes,
)
from cblab_teach.plugins import CachePlugin, KVQuantizationPlugin
from cblab_teach.workloads import make_workload

CFG = dict(max_tokens_per_step=12, prefill_chunk_size=5, block_size=4, num_blocks=64)


@pytest.fixture(scope="module")
def collected(model64, workload):
    collector = MetricsCollector()
    engine = Engine(model64, EngineConfig(**CFG), plugins=[collector])
    for p, n in zip(workload.prompts, workload.max_new_tokens):
        engine.add_request(p, n)
        engine.step()  # staggered arrivals, so TTFTs differ
    engine.run()
    return engine, collector


def test_step_metrics_match_the_records(collected):
    engine, collector = collected
    steps = collector.step_metrics()
    assert [s.step for s in steps] == [r.step for r in engine.records]
    for s, r in zip(steps, engine.records):
        assert s.decode_tokens == sum(c.length for c in r.plan.chunks if c.kind == "decode")
        assert s.prefill_tokens == sum(c.length for c in r.plan.chunks if c.kind == "prefill")
        assert s.duration_s == r.duration_s > 0
        blocks = {b for table in r.block_tables.values() for b in table}
        assert s.kv_used_blocks == len(blocks)
        assert s.kv_bytes == len(blocks) * CFG["block_size"] * engine.kv.bytes_per_slot
        assert s.memory_bytes is not None and s.memory_bytes > 0


def test_request_metrics_follow_their_definitions(collected):
    engine, collector = collected
    metrics = {m.request_id: m for m in collector.request_metrics()}
    assert set(metrics) == set(engine.requests)
    for rid, req in engine.requests.items():
        m = metrics[rid]
        times = req.token_times
        assert m.num_output_tokens == len(req.output_ids) == len(times)
        assert m.ttft_s == pytest.approx(times[0] - req.arrival_time)
        assert m.e2e_s == pytest.approx(times[-1] - req.arrival_time)
        assert m.itl_s == pytest.approx([b - a for a, b in zip(times, times[1:])])
        if len(times) > 1:  # TPOT = (E2E - TTFT) / (N - 1), which is the mean inter-token latency
            assert m.tpot_s == pytest.approx((m.e2e_s - m.ttft_s) / (len(times) - 1))
            assert m.tpot_s == pytest.approx(statistics.mean(m.itl_s))
        else:
            assert m.tpot_s is None
        first = next(r.step for r in engine.records if rid in r.sampled)
        assert m.ttft_steps == first - req.arrival_step + 1
    assert len({m.ttft_steps for m in metrics.values()}) > 1


def test_summary_throughput_and_percentiles(collected):
    engine, collector = collected
    s = collector.summary()
    reqs = collector.request_metrics()
    wall = engine.records[-1].start_time + engine.records[-1].duration_s - engine.records[0].start_time
    out_tokens = sum(len(r.output_ids) for r in engine.requests.values())
    assert s["requests"] == len(engine.requests) and s["steps"] == len(engine.records)
    assert s["output_tokens"] == out_tokens
    assert s["throughput_tok_s"] == pytest.approx(out_tokens / wall)
    ttft = torch.tensor([r.ttft_s for r in reqs], dtype=torch.float64)
    for q in (50, 90, 99):
        assert s[f"ttft_p{q}_s"] == pytest.approx(float(torch.quantile(ttft, q / 100)))
    assert s["ttft_p50_s"] <= s["ttft_p90_s"] <= s["ttft_p99_s"]
    for key in ("tpot_p50_s", "tpot_p90_s", "e2e_p50_s", "itl_p50_s"):
        assert s[key] > 0


def test_percentile_against_torch():
    xs = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.3]
    for q in (0, 10, 50, 75, 100):
        assert percentile(xs, q) == pytest.approx(float(torch.quantile(torch.tensor(xs, dtype=torch.float64), q / 100)))
    assert math.isnan(percentile([], 50))


def test_from_engine_equals_the_attached_collector(collected):
    engine, collector = collected
    after = MetricsCollector.from_engine(engine)
    assert after.request_metrics() == collector.request_metrics()
    assert [(s.step, s.decode_tokens, s.kv_bytes) for s in after.step_metrics()] == [
        (s.step, s.decode_tokens, s.kv_bytes) for s in collector.step_metrics()
    ]


def test_compare_with_the_static_baseline(model64):
    w = make_workload(8, (3, 12), (2, 24), vocab_size=97, seed=11, long_tail=True)
    engine = Engine(model64, EngineConfig(max_tokens_per_step=64, prefill_chunk_size=32))
    continuous = engine.generate(w.prompts, w.max_new_tokens)
    static = StaticBatchingEngine(model64, batch_size=4)
    assert static.generate(w.prompts, w.max_new_tokens) == continuous
    stat = MetricsCollector.from_static(static)
    sm = {m.request_id: m for m in stat.request_metrics()}
    assert [sm[i].num_output_tokens for i in range(len(w))] == w.max_new_tokens
    # the second batch waits for the first: its first token comes after the whole first batch
    first_batch_steps = max(w.max_new_tokens[:4])
    assert all(sm[i].ttft_steps == first_batch_steps + 1 for i in range(4, 8))
    assert all(sm[i].ttft_s > sm[j].e2e_s for i in range(4, 8) for j in range(4))
    cmp = MetricsCollector.from_engine(engine).compare(static)
    assert cmp["this"]["steps"] == len(engine.records) and cmp["other"]["steps"] == len(static.records)
    assert cmp["ratio"]["steps"] == pytest.approx(len(engine.records) / len(static.records))
    assert cmp["this"]["steps"] < cmp["other"]["steps"]
    assert cmp["this"]["ttft_steps_mean"] < cmp["other"]["ttft_steps_mean"]
    with pytest.raises(MonitoringError, match="cannot read metrics"):
        MetricsCollector().compare(42)


# -- memory profiles ---------------------------------------------------------------------------


def test_memory_profiler_counts_pool_and_weights(model64):
    engine = Engine(model64, EngineConfig(**CFG))
    profiler = MemoryProfiler(engine)
    snap = profiler.snapshot("start")
    cfg = model64.config
    pool = 2 * cfg.num_layers * CFG["num_blocks"] * CFG["block_size"] * cfg.kv_heads * cfg.head_dim * 8  # float64
    weights = sum(p.numel() * p.element_size() for p in model64.parameters())
    assert snap.tensors["kv_pool"] == pool and snap.tensors["parameters"] == weights
    assert snap.rss_bytes > pool
    engine.generate([[1, 2, 3]], 3)
    profiler.snapshot()
    assert [r["label"] for r in profiler.table()] == ["start", "#1"]
    assert profiler.snapshots[1].delta(snap)["kv_pool"] == 0  # the pool is allocated once


def test_detailed_profiler_phases_and_named_deltas(model64):
    engine = Engine(model64, EngineConfig(**CFG))
    profiler = DetailedMemoryProfiler(engine)
    profiler.snapshot("float pool")
    with profiler.phase("quantize") as phase:
        KVQuantizationPlugin().install(engine.kv)
    profiler.snapshot("int8 pool")
    cfg = model64.config
    slots_heads = cfg.num_layers * CFG["num_blocks"] * CFG["block_size"] * cfg.kv_heads
    expected = 2 * slots_heads * ((cfg.head_dim + 2) - cfg.head_dim * 8)  # int8 values + fp16 scale vs float64
    assert phase.delta["kv_pool"] == expected
    assert profiler.delta("float pool", "int8 pool")["kv_pool"] == expected
    assert phase.seconds >= 0 and profiler.phase_table()[0]["phase"] == "quantize"
    with pytest.raises(RuntimeError), profiler.phase("fails"):
        raise RuntimeError("x")
    assert profiler.phases[-1].after is not None  # a phase that raised is still closed
    with pytest.raises(MonitoringError, match="no snapshot named 'nope'"):
        profiler.delta("nope", "int8 pool")


# -- leak detection --------------------------------------------------------------------------------


class KeepsEveryKV(CachePlugin):
    """The leak: holds on to every K/V tensor it is shown."""

    def __init__(self) -> None:
        self.kept: list = []

    def after_append(self, layer, k, v, batch):
        self.kept.append((k, v))


class KeepsLastKV(CachePlugin):
    """Bounded: holds only the most recent few K/V tensors (memory plateaus)."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.kept: list = []

    def after_append(self, layer, k, v, batch):
        self.kept = [*self.kept, (k.clone(), v.clone())][-self.keep :]


def _leak_run(model, cache_plugin, steps: int = 30) -> MemoryLeakDetector:
    detector = MemoryLeakDetector(window=16)
    engine = Engine(model, EngineConfig(**CFG), plugins=[cache_plugin, detector])
    w = make_workload(40, (3, 10), (4, 10), vocab_size=97, seed=9)
    for p, n in zip(w.prompts, w.max_new_tokens):
        engine.add_request(p, n)
    for _ in range(steps):
        engine.step()
    assert len(detector.samples) == steps
    return detector


def test_leak_detector_reports_a_plugin_that_keeps_every_kv(model64):
    leaky = _leak_run(model64, KeepsEveryKV())
    report = leaky.report()
    assert report.leaking and "LEAK" in str(report)
    kept_first, kept_last = leaky.samples[0][1], leaky.samples[-1][1]
    assert kept_last > kept_first
    # the slope is about the K/V bytes of one step (12 tokens * heads * dim * 8 bytes * 2 * layers)
    assert report.slope_bytes_per_step > 0.5 * 2 * 2 * 12 * 2 * 8 * 8


@pytest.mark.parametrize("plugin", [CachePlugin, KeepsLastKV])
def test_leak_detector_calls_a_clean_run_of_the_same_length_clean(model64, plugin):
    report = _leak_run(model64, plugin()).report()
    assert report.enough_samples and not report.leaking, str(report)


def test_leak_detector_needs_a_full_window_and_valid_settings():
    detector = MemoryLeakDetector(window=5, measure=lambda engine: 0)
    detector.samples = [(i, 1000 * i) for i in range(4)]
    assert not detector.report().leaking and not detector.report().enough_samples
    detector.samples.append((4, 4000))
    assert detector.report().leaking
    with pytest.raises(MonitoringError, match="window"):
        MemoryLeakDetector(window=1)
    with pytest.raises(MonitoringError, match="measure"):
        MemoryLeakDetector(measure="gpu")


def test_reachable_tensor_bytes_counts_each_storage_once():
    t = torch.zeros(100, dtype=torch.float32)
    holder = {"a": t, "b": [t, t[10:20]], "c": (torch.ones(5, dtype=torch.float64),)}
    assert reachable_tensor_bytes(holder) == 400 + 40
