"""The benchmarks' quick mode runs, returns the agreed structure, and its numbers make sense.

No timing is asserted here (timings belong to ``make bench``); what is checked
is what must hold on any machine: identical outputs across engines, step counts
against the workload's own bound, KV waste within one partial block.
"""

from __future__ import annotations

import importlib
import math
import random

import plotly.graph_objects as go
import pytest

from benchmarks import run as runner
from benchmarks.common import continuous_steps, ideal_speedup, percentile, static_steps

ALL = runner.discover()  # every benchmarks/bench_*.py


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {name: importlib.import_module(f"benchmarks.bench_{name}").run(quick=True) for name in ALL}


@pytest.mark.parametrize("name", ALL)
def test_result_structure(results, name):
    r = results[name]
    assert r["name"] == name
    assert r["metrics"] and all(isinstance(v, (int, float)) for v in r["metrics"].values())
    assert all(math.isfinite(v) for v in r["metrics"].values()), r["metrics"]
    assert r["figures"] and all(isinstance(f, go.Figure) for f in r["figures"])
    assert r["table"] and all(isinstance(row, dict) and row for row in r["table"])


def test_continuous_vs_static_against_the_workload_bound(results):
    m = results["continuous_vs_static"]["metrics"]
    assert m["outputs_identical_share"] == 1.0
    assert m["static_steps"] == m["ideal_static_steps"]  # static batching runs exactly its longest member per batch
    assert m["continuous_steps"] >= m["ideal_continuous_steps"]  # nobody beats the bound in steps
    assert m["ideal_speedup"] == pytest.approx(m["ideal_static_steps"] / m["ideal_continuous_steps"])
    assert m["ideal_speedup"] > 1  # a long tail always leaves static batches waiting
    assert 0 < m["static_padding_share"] < 1
    assert m["continuous_ttft_p50_s"] <= m["continuous_e2e_p50_s"]


def test_huggingface_outputs_identical(results):
    m = results["huggingface"]["metrics"]
    assert m["identical_requests_vs_generate_static"] == 1.0
    assert m["identical_requests_vs_generate_batch"] == 1.0
    assert m["identical_tokens_vs_generate_batch"] == 1.0
    assert min(v for k, v in m.items() if k.endswith("throughput_tok_s")) > 0


def test_kv_waste_within_one_partial_block(results):
    m = results["kv_memory"]["metrics"]
    assert m["outputs_identical_share"] == 1.0
    assert m["paged_max_waste_per_request_slots"] <= m["block_size"] - 1
    assert m["paged_worst_step_waste_over_bound"] <= 1.0
    assert m["paged_mean_waste_share"] < m["dense_mean_waste_share"] < m["padded_mean_waste_share"]
    assert m["paged_peak_reserved_slots"] >= m["peak_used_slots"]


def test_overhead_phases_add_up(results):
    m = results["overhead"]["metrics"]
    for c in (2, 8):
        shares = [m[f"c{c}_{p}_share"] for p in runner_phases()]
        assert all(s >= 0 for s in shares), shares
        assert sum(shares) == pytest.approx(1.0)
        assert 0 <= m[f"c{c}_overhead_share"] <= 1


def runner_phases() -> tuple[str, ...]:
    from benchmarks.bench_overhead import PHASES

    return PHASES


def test_scaling_reports_every_size(results):
    m = results["scaling"]["metrics"]
    assert all(m[f"c{c}_tok_s"] > 0 for c in (1, 4, 16))
    assert all(m[f"plan_{n}_requests_us"] > 0 for n in (1, 16, 64))


def test_disaggregated_counts_the_kv_it_moves(results):
    from benchmarks.common import model_config

    m, c = results["disaggregated"]["metrics"], model_config(quick=True)
    assert m["outputs_identical_share"] == 1.0
    assert m["kv_bytes_per_prompt_token"] == 2 * c.num_layers * c.kv_heads * c.head_dim * 4  # K and V, float32
    assert m["colocated_tpot_p90_ms"] > 0 and m["disaggregated_ttft_long_p50_ms"] > 0


def test_lora_batches_adapters_together(results):
    m = results["lora"]["metrics"]
    assert m["outputs_identical_share"] == 1.0  # batched deltas == each adapter merged into its own model
    assert m["mixed_steps"] < m["separate_steps"]  # one engine's steps serve every adapter at once


def test_swap_against_recompute_counts_the_work(results):
    from benchmarks.common import model_config

    m, c = results["swap"]["metrics"], model_config(quick=True)
    assert m["outputs_identical_share"] == 1.0
    assert m["kv_bytes_per_token"] == 2 * c.num_layers * c.kv_heads * c.head_dim * 4  # K and V, float32
    # swap computes every token once; recompute computes the thrown-away K/V on top
    assert m["run_swap_tokens_computed"] == m["run_tokens_needed"] and m["run_swap_recomputed_tokens"] == 0
    assert m["run_recompute_tokens_computed"] == m["run_tokens_needed"] + m["run_recomputed_tokens"]
    assert m["run_recomputed_tokens"] > 0 and m["run_swap_outs"] == m["run_swap_preemptions"] > 0
    assert m["run_swapped_mib"] > 0
    for length in (16, 64):
        assert m[f"L{length}_ratio_min"] <= m[f"L{length}_recompute_over_swap"] <= m[f"L{length}_ratio_max"]
    rows = [r for r in results["swap"]["table"] if isinstance(r["tokens"], int)]
    assert [r["kv_bytes_out_and_back"] for r in rows] == [2 * r["tokens"] * m["kv_bytes_per_token"] for r in rows]


def test_advanced_draft_cache_and_copy_on_write(results):
    m = results["advanced"]["metrics"]
    assert m["draft_guesses_identical_share"] == 1.0
    assert m["draft_cached_tokens_per_step"] < m["draft_recompute_tokens_per_step"]  # no history is re-prefilled
    assert m["cow_copies"] == m["cow_n"] - 1  # the prompt ends in a partly filled block: n - 1 copies
    assert m["cow_group_prefill_tokens"] == m["cow_prompt_tokens"]  # the prompt is computed once ...
    assert m["cow_separate_prefill_tokens"] == m["cow_n"] * m["cow_prompt_tokens"]  # ... not n times
    assert m["cow_group_peak_blocks"] < m["cow_separate_peak_blocks"]
    assert all(m[f"sampled_{t}_draft_tokens"] > 0 for t in ("greedy", "t05", "t10"))  # sampled requests speculate


def test_ideal_bound_by_hand():
    # batches [5, 1] and [1, 1]: 5 + 1 static steps; 2 slots: 5 | 1+1+1, so 5 continuous steps
    assert static_steps([5, 1, 1, 1], 2) == 6
    assert continuous_steps([5, 1, 1, 1], 2) == 5
    assert ideal_speedup([5, 1, 1, 1], 2) == pytest.approx(6 / 5)
    assert continuous_steps([3, 3], 4) == 3  # more slots than requests


def test_ideal_bound_properties():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 30))]
        b = rng.randint(1, 8)
        cont, stat = continuous_steps(lengths, b), static_steps(lengths, b)
        assert max(lengths) <= cont <= stat
        assert cont >= math.ceil(sum(lengths) / b)
        if b == 1:
            assert cont == stat == sum(lengths)


def test_percentile_matches_definition():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    assert math.isnan(percentile([], 50))


def test_runner_discovers_and_survives_a_failing_benchmark(tmp_path, monkeypatch):
    core = {"continuous_vs_static", "huggingface", "overhead", "kv_memory", "scaling", "advanced", "plugins"}
    core |= {"disaggregated", "lora", "swap"}
    assert core <= set(runner.discover())
    broken = runner.run_one("no_such_benchmark", quick=True)
    assert broken["error"] and "ModuleNotFoundError" in broken["error"]
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    fig = go.Figure(go.Bar(x=["a"], y=[1]))
    good = {"name": "good", "metrics": {"x": 1.0}, "figures": [fig], "table": [{"a": 1}], "error": None, "seconds": 0.1}
    report = runner.write_report([good, broken], "python -m benchmarks.run --quick", quick=True)
    text = report.read_text()
    assert "FAILED" in text and "no_such_benchmark" in text
    assert '<script src="https://cdn' not in text and "Plotly" in text  # plotly is embedded: opens offline
    path = runner.write_json(broken, "cmd", quick=True)
    assert path.exists() and "ModuleNotFoundError" in path.read_text()
