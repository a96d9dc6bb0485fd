"""The production pictures draw the production arithmetic: checked against a recompute from the raw shapes and specs.

Roofline: the ridge is peak / bandwidth, every point sits on ``min(peak, intensity x bandwidth)``, the GEMMs'
intensity grows with the batch while decode attention's stays at the GQA group. Memory bar: the segments tile the
GPU's memory, or run past it by exactly the KV that does not fit. Simulated timeline: the bars are the steps' tokens,
as wide as the steps. Then the words (Chinese in ``lang="zh"``), the legend (off the plot area) and bad inputs.
"""

from __future__ import annotations

import math
import re

import pytest

from cblab_teach.core.config import EngineConfig
from cblab_teach.errors import CBLabError, ConfigError
from cblab_teach.production import GPUS, MODEL_SHAPES
from cblab_teach.production.simulate import RequestResult, SimResult, SimStep, poisson_workload, simulate
from cblab_teach.viz import memory_bar_figure, roofline_figure, sim_timeline_figure
from cblab_teach.viz.lang import ENV, set_language
from cblab_teach.viz.memory_bar import COLORS, GIB
from cblab_teach.viz.roofline_chart import TERA

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
LLAMA, H100 = MODEL_SHAPES["Llama-3.1-8B"], GPUS["H100-SXM"]
BATCHES = (1, 8, 64, 256, 1024)


@pytest.fixture(autouse=True)
def english_unless_asked(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    set_language(None)
    yield
    set_language(None)


def trace(fig, name: str):
    (found,) = [t for t in fig.data if t.name == name]
    return found


def named(fig, prefix: str):
    (found,) = [t for t in fig.data if t.name and t.name.startswith(prefix)]
    return found


# ---- roofline ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roof():
    return roofline_figure(LLAMA, H100, batches=BATCHES, context=1024, prefill_chunk=(2048, 0), lang="en")


def test_the_roof_meets_the_peak_at_peak_over_bandwidth(roof) -> None:
    peak, bandwidth = H100.bf16_tflops * 1e12, H100.bandwidth_gbs * 1e9  # straight from the sheet's numbers
    ridge = trace(roof, "ridge point")
    assert ridge.x[0] == pytest.approx(peak / bandwidth) and ridge.y[0] == pytest.approx(peak / TERA)
    line = trace(roof, "roof")
    assert line.x[1] == pytest.approx(peak / bandwidth)
    assert [y * TERA for y in line.y] == pytest.approx([min(peak, x * bandwidth) for x in line.x])
    assert line.y[1] == line.y[2] and line.y[0] < line.y[1]  # the slope, then flat
    assert roof.layout.xaxis.type == "log" and roof.layout.yaxis.type == "log"


def test_every_point_sits_on_the_roof_and_inside_the_axes(roof) -> None:
    peak, bandwidth = H100.bf16_tflops * 1e12, H100.bandwidth_gbs * 1e9
    points = [t for t in roof.data if t.legendgroup and t.legendgroup.startswith(("gemm", "attention"))]
    assert len(points) == 4 and sum(len(t.x) for t in points) == 5 * (len(BATCHES) + 1)
    (x_lo, x_hi), (y_lo, y_hi) = (10**v for v in roof.layout.xaxis.range), (10**v for v in roof.layout.yaxis.range)
    for t in points:
        for x, y in zip(t.x, t.y):
            assert y * TERA == pytest.approx(min(peak, x * bandwidth))
            assert x_lo < x < x_hi and y_lo < y < y_hi


def test_gemms_turn_compute_bound_near_the_ridge_and_decode_attention_stays_at_the_group(roof) -> None:
    s, peak, bandwidth = LLAMA, H100.bf16_tflops * 1e12, H100.bandwidth_gbs * 1e9
    gemm = trace(roof, "GEMMs, decode")
    mlp = [(cd[1], x) for cd, x in zip(gemm.customdata, gemm.x) if cd[0] == "mlp"]
    assert [words for words, _ in mlp] == [f"decode, batch {b}" for b in BATCHES]
    for b, (_, x) in zip(BATCHES, mlp):  # 3 matrices a layer, read once a step, bf16; activations in and out
        weights = 3 * s.layers * s.hidden * s.intermediate
        assert x == pytest.approx(2 * b * weights / (2 * weights + 2 * 3 * s.layers * b * (s.hidden + s.intermediate)))
    bound = {b: x * bandwidth >= peak for b, (_, x) in zip(BATCHES, mlp)}
    assert bound == {1: False, 8: False, 64: False, 256: False, 1024: True}  # the ridge is ~295 FLOPs/byte
    attention = trace(roof, "attention, decode")
    group, c = s.q_heads // s.kv_heads, 1024
    # 4 q_heads head_dim FLOPs per key; 2 kv_heads head_dim 2-byte values per key read, plus its own K/V written
    assert list(attention.x) == pytest.approx([group * c / (c + 1)] * len(BATCHES))
    assert all(y * TERA < peak / 10 for y in attention.y)
    assert all("memory-bound" == cd[3] for cd in attention.customdata)


def test_fp8_gemms_get_their_own_roof_and_attention_keeps_the_16_bit_one() -> None:
    fig = roofline_figure("Llama-3.1-8B", "H100-SXM", batches=(2048,), prefill_chunk=None, dtype="fp8")
    assert trace(fig, "ridge point").x[0] == pytest.approx(1979e12 / 3350e9)
    assert trace(fig, "attention roof (bf16)").y[-1] == pytest.approx(989)
    assert max(trace(fig, "GEMMs, decode").y) == pytest.approx(1979)
    assert not [t for t in fig.data if t.name and "prefill" in t.name]


# ---- memory bar --------------------------------------------------------------------------------------------------


def bar_segments(fig) -> list[tuple[str, float, float]]:
    """``(name, base, GiB)`` of each segment, in drawing order."""
    return [(t.legendgroup, t.base[0], t.x[0]) for t in fig.data if t.type == "bar"]


def llama_kv_bytes(requests: int, context: int) -> float:
    """2 (K, V) x layers x kv_heads x head_dim x 2 bytes per token, in whole 16-token blocks."""
    s = LLAMA
    return requests * math.ceil(context / 16) * 16 * 2 * s.layers * s.kv_heads * s.head_dim * 2


@pytest.mark.parametrize("utilization", [0.9, 0.75])
def test_the_segments_tile_the_gpu_memory(utilization) -> None:
    fig = memory_bar_figure(LLAMA, H100, requests=64, context=4096, memory_utilization=utilization)
    segs = bar_segments(fig)
    assert [n for n, _, _ in segs] == ["weights", "kv_used", "kv_over", "kv_free", "reserve"]
    total = H100.memory_bytes / GIB
    assert sum(g for _, _, g in segs) == pytest.approx(total)
    for (_, base, size), (_, next_base, _) in zip(segs, segs[1:]):
        assert next_base == pytest.approx(base + size)  # contiguous, one bar
    sizes = {n: g * GIB for n, _, g in segs}
    assert sizes["weights"] == pytest.approx(LLAMA.params * 2)
    assert sizes["kv_used"] == pytest.approx(llama_kv_bytes(64, 4096))
    assert sizes["reserve"] == pytest.approx((1 - utilization) * H100.memory_bytes)
    assert sizes["kv_free"] == pytest.approx(utilization * H100.memory_bytes - sizes["weights"] - sizes["kv_used"])
    util_line = [s for s in fig.layout.shapes if s.line.dash == "dot"][0]
    assert util_line.x0 == pytest.approx(utilization * H100.memory_bytes / GIB)
    assert sizes["kv_over"] == 0 and not trace(fig, named(fig, "KV that does not fit").name).showlegend
    assert "over-full" not in fig.layout.title.text
    assert [t.text[0] for t in fig.data] == [f"{g:.1f} GiB" for _, _, g in segs]


def test_an_over_full_pool_is_drawn_past_the_gpu_in_the_warning_colour() -> None:
    fig = memory_bar_figure(LLAMA, H100, requests=256, context=8192)
    sizes = {n: g * GIB for n, _, g in bar_segments(fig)}
    pool = 0.9 * H100.memory_bytes - LLAMA.params * 2
    assert sizes["kv_used"] == pytest.approx(pool) and sizes["kv_free"] == 0
    assert sizes["kv_over"] == pytest.approx(llama_kv_bytes(256, 8192) - pool)
    over = named(fig, "KV that does not fit")
    assert over.showlegend and over.marker.color == COLORS["kv_over"] and over.marker.pattern.shape
    assert "over-full" in fig.layout.title.text
    end = sum(sizes.values()) / GIB
    assert end > H100.memory_bytes / GIB and fig.layout.xaxis.range[1] >= end  # the whole bar stays in view
    gpu_line = [s for s in fig.layout.shapes if s.line.dash == "solid"][0]
    assert gpu_line.x0 == pytest.approx(H100.memory_bytes / GIB)


def test_weights_that_do_not_fit_are_drawn_not_refused() -> None:
    fig = memory_bar_figure("Llama-3.1-70B", "L4", requests=1, context=16)
    sizes = {n: g * GIB for n, _, g in bar_segments(fig)}
    assert sizes["kv_used"] == 0 and sizes["kv_over"] == pytest.approx(llama_kv_bytes(1, 16) * 80 / 32)
    assert sizes["weights"] > GPUS["L4"].memory_bytes and "over-full" in fig.layout.title.text


# ---- simulated timeline ------------------------------------------------------------------------------------------


def hand_made() -> SimResult:
    steps = [SimStep(0.0, 0.20, 0, 512, 2, 1, 0), SimStep(0.20, 0.05, 2, 300, 3, 0, 0),
             SimStep(0.25, 0.03, 3, 0, 2, 1, 1), SimStep(1.00, 0.02, 1, 0, 1, 0, 0)]  # fmt: skip
    requests = [RequestResult(0, 0.0, 300, [0.25, 0.28, 1.02]), RequestResult(1, 0.0, 512, [0.2, 0.25])]
    return SimResult(requests, steps)


def test_bars_are_the_steps_tokens_as_wide_as_the_steps() -> None:
    result = hand_made()
    fig = sim_timeline_figure(result)
    decode, prefill = trace(fig, "decode tokens"), trace(fig, "prefill tokens")
    assert list(decode.y) == [0, 2, 3, 1] and list(prefill.y) == [512, 300, 0, 0]
    assert list(decode.x) == [0.0, 0.2, 0.25, 1.0] and list(prefill.width) == [0.2, 0.05, 0.03, 0.02]
    assert decode.offset == 0 and fig.layout.barmode == "stack"
    assert list(trace(fig, "running").y) == [2, 3, 2, 1] and list(trace(fig, "waiting").y) == [1, 0, 1, 0]
    assert list(trace(fig, "running").x) == pytest.approx([0.2, 0.25, 0.28, 1.02])  # after each step
    marks = trace(fig, "preemptions")
    assert list(marks.x) == pytest.approx([0.265]) and marks.customdata[0][1] == 1 and marks.showlegend
    assert tuple(fig.layout.xaxis.range) == pytest.approx((0.0, 1.02))
    assert "4 steps, 2 requests, 1.02 s" in fig.layout.title.text


def test_a_simulated_run_with_preemptions() -> None:
    w, arrivals = poisson_workload(12, 50.0, prompt_len=(256, 1024), output_len=(64, 256), seed=1)
    config = EngineConfig(max_tokens_per_step=1024, prefill_chunk_size=512, max_running=64, preemption=True)
    result = simulate("Llama-3.1-8B", "L4", w, arrivals, engine_config=config, memory_utilization=0.655)
    fig = sim_timeline_figure(result)
    assert sum(trace(fig, "decode tokens").y) == sum(s.decode_tokens for s in result.steps)
    assert sum(trace(fig, "prefill tokens").y) == sum(s.prefill_tokens for s in result.steps)
    assert sum(trace(fig, "prefill tokens").width) == pytest.approx(sum(s.seconds for s in result.steps))
    preempting = [s for s in result.steps if s.preempted]
    assert preempting, "this workload is meant to preempt on a small pool"
    assert sum(cd[1] for cd in trace(fig, "preemptions").customdata) == sum(s.preempted for s in preempting)


def test_a_step_with_no_preemption_gets_no_legend_entry_for_them() -> None:
    steps = [SimStep(0.0, 0.1, 0, 10, 1, 0, 0), SimStep(0.1, 0.1, 1, 0, 1, 0, 0)]
    fig = sim_timeline_figure(SimResult([RequestResult(0, 0.0, 10, [0.1, 0.2])], steps))
    assert not trace(fig, "preemptions").showlegend and len(trace(fig, "preemptions").x) == 0


# ---- words, legend, bad inputs -----------------------------------------------------------------------------------

FIGURES = {
    "roofline": lambda lang: roofline_figure("Llama-3.1-8B", "H100-SXM", dtype="fp8", lang=lang),
    "memory": lambda lang: memory_bar_figure("Llama-3.1-8B", "H100-SXM", lang=lang),
    "memory over-full": lambda lang: memory_bar_figure("Llama-3.1-8B", "L4", requests=64, lang=lang),
    "timeline": lambda lang: sim_timeline_figure(hand_made(), lang=lang),
}


def visible_texts(fig) -> list[str]:
    """The title, axis titles, annotations and legend entries: every word a reader sees, hover aside."""
    layout = fig.layout.to_plotly_json()
    out = [layout.get("title", {}).get("text", "")]
    out += [v.get("title", {}).get("text", "") for k, v in layout.items() if re.fullmatch(r"[xy]axis\d*", k)]
    out += [a.get("text", "") for a in layout.get("annotations", ())]
    out += [t.name for t in fig.data if t.showlegend is not False and t.name]
    return [t for t in out if t]


@pytest.mark.parametrize("name", list(FIGURES))
def test_chinese_words_in_zh_and_the_same_numbers(name) -> None:
    zh, en = FIGURES[name]("zh"), FIGURES[name]("en")
    zh_words, en_words = visible_texts(zh), visible_texts(en)
    assert len(zh_words) >= 5 and len(zh_words) == len(en_words), (zh_words, en_words)
    assert [t for t in zh_words if not HAN.search(t)] == []
    assert [t for t in en_words if HAN.search(t)] == []
    assert all(HAN.search(t.hovertemplate) for t in zh.data if t.hovertemplate)
    assert [(t.x, t.y) for t in zh.data] == [(t.x, t.y) for t in en.data]
    set_language("zh")
    assert visible_texts(FIGURES[name](None)) == zh_words  # left out, the language is the chosen one


@pytest.mark.parametrize("name", list(FIGURES))
def test_the_legend_sits_above_the_plot_area_and_has_room(name) -> None:
    fig = FIGURES[name]("zh")
    legend, margin = fig.layout.legend, fig.layout.margin
    # a horizontal row whose bottom edge is the plot area's top, in the top margin
    assert legend.orientation == "h" and legend.y >= 1 and legend.yanchor == "bottom" and legend.yref == "paper"
    assert fig.layout.showlegend is True and margin.t >= 70
    assert fig.layout.height - margin.t - margin.b >= 150  # a readable plot area on a 768 px projector
    assert fig.layout.height <= 600
    inside = [a for a in fig.layout.annotations if a.yref == "paper" and not 0 <= a.y <= 1]
    assert inside == [], "labels of lines stay inside the plot area, off the legend's row"


@pytest.mark.parametrize(
    ("call", "named_value"),
    [
        (lambda: roofline_figure("Llama-9B", "H100-SXM"), "Llama-9B"),
        (lambda: roofline_figure("Llama-3.1-8B", "B300"), "B300"),
        (lambda: roofline_figure("Llama-3.1-8B", "H100-SXM", batches=()), r"\(\)"),
        (lambda: roofline_figure("Llama-3.1-8B", "H100-SXM", batches=(8, 0)), "0"),
        (lambda: roofline_figure("Llama-3.1-8B", "H100-SXM", batches="8"), "'8'"),
        (lambda: roofline_figure("Llama-3.1-8B", "H100-SXM", context=0), "0"),
        (lambda: roofline_figure("Llama-3.1-8B", "H100-SXM", prefill_chunk=(512,)), r"\(512,\)"),
        (lambda: roofline_figure("Llama-3.1-8B", "H100-SXM", prefill_chunk=(512, -1)), "-1"),
        (lambda: roofline_figure("Llama-3.1-8B", "H100-SXM", dtype="fp4"), "fp4"),
        (lambda: roofline_figure("Llama-3.1-8B", "A100-80GB", dtype="fp8"), "fp8"),
        (lambda: roofline_figure("DeepSeek-V3", "H100-SXM"), "DeepSeek-V3"),
        (lambda: memory_bar_figure("Llama-3.1-8B", "H100-SXM", memory_utilization=1.5), "1.5"),
        (lambda: memory_bar_figure("Llama-3.1-8B", "H100-SXM", requests=-1), "-1"),
        (lambda: memory_bar_figure("Llama-3.1-8B", "H100-SXM", requests=True), "True"),
        (lambda: memory_bar_figure("Llama-3.1-8B", "H100-SXM", context=0), "0"),
        (lambda: memory_bar_figure("Llama-3.1-8B", "H100-SXM", kv_dtype="fp6"), "fp6"),
        (lambda: sim_timeline_figure([SimStep(0.0, 0.1, 1, 0, 1, 0, 0)]), "SimStep"),
        (lambda: sim_timeline_figure(SimResult([], [])), "no steps"),
    ],
)
def test_bad_inputs_raise_config_errors_that_name_the_value(call, named_value) -> None:
    with pytest.raises(ConfigError, match=named_value):
        call()


def test_an_unknown_language_is_a_typed_error() -> None:
    for call in (lambda: roofline_figure(LLAMA, H100, lang="fr"), lambda: memory_bar_figure(LLAMA, H100, lang="fr"),
                 lambda: sim_timeline_figure(hand_made(), lang="fr")):  # fmt: skip
        with pytest.raises(CBLabError, match="'fr'"):
            call()
