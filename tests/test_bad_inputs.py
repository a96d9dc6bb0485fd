"""A table of bad inputs: each gets its own typed error and a message naming the bad value.

One row per mistake a learner (or a plugin author) can make, from configuration to
requests, KV caches, plugins and the visual layer. Each row runs against an engine
that is already serving a request; after the error, that request (and any other the
row added) still finishes with exactly the output it gets when run alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch

from cblab_teach import (
    CapacityError,
    CBLabError,
    ConfigError,
    DenseKVCache,
    DuplicateRequestError,
    Engine,
    EngineConfig,
    KVCacheError,
    ModelConfig,
    PagedAllocator,
    PluginError,
    RequestError,
    SamplingParams,
    Scheduler,
    StaticBatchingEngine,
    TinyLM,
    UnknownRequestError,
)
from cblab_teach.advanced.lora import LoRAAdapter
from cblab_teach.errors import AdapterError
from cblab_teach.plugins.base import AttentionPlugin, CachePlugin, SchedulerPlugin
from cblab_teach.production import GPUS, MODEL_SHAPES, GPUSpec, ModelShape, step_time
from cblab_teach.viz import (
    NoRecordsError,
    NotPagedError,
    StepOutOfRangeError,
    StepPlayer,
    UnknownViewError,
    block_map_figure,
    budget_figure,
    mask_figure,
)

from .helpers import run_alone
from .reference import greedy

VOCAB = 97
MAX_POSITION = 64
SERVING = EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4, kv_layout="paged", block_size=8, num_blocks=6)
GOOD_PROMPT, GOOD_NEW = [3, 1, 4, 1, 5, 9], 8  # the request already running when the bad input arrives


@pytest.fixture(scope="module")
def model() -> TinyLM:
    """float64, so 'same output as alone' is exact; max_position above the 48-slot pool, so both limits are reachable."""
    cfg = ModelConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position=MAX_POSITION,
        dtype=torch.float64,
    )
    return TinyLM(cfg, seed=1)


@pytest.fixture(scope="module")
def alone(model) -> Callable[[list[int], int], list[int]]:
    """The reference output of a request served by itself, computed once per (prompt, length)."""
    cache: dict[tuple, list[int]] = {}

    def reference(prompt: list[int], max_new_tokens: int) -> list[int]:
        key = (tuple(prompt), max_new_tokens)
        if key not in cache:
            cache[key] = run_alone(model, prompt, max_new_tokens)
        return cache[key]

    return reference


@dataclass
class Ctx:
    """What a row may touch: the serving engine, its model, and (viz rows) records of a finished run."""

    engine: Engine
    model: TinyLM
    records: Callable[[str], list] = field(default=lambda layout: [])


@dataclass(frozen=True)
class Row:
    name: str
    trigger: Callable[[Ctx], object]
    error: type[CBLabError]
    message: str  # regex the message must match
    cleanup: Callable[[Ctx], None] | None = None  # what a user does to recover, if anything


# -- plugins that raise once, in one hook ----------------------------------------------------------


class RaisesOnce:
    """Raises in ``hook`` the first time it is called, then behaves."""

    def __init__(self, hook: str) -> None:
        self.hook, self.fired = hook, False

    def _maybe_raise(self, hook: str) -> None:
        if hook == self.hook and not self.fired:
            self.fired = True
            raise RuntimeError("boom")


class Exploding(RaisesOnce, SchedulerPlugin):
    def before_step(self, engine):
        self._maybe_raise("before_step")

    def after_step(self, engine, record):
        self._maybe_raise("after_step")

    def on_request_completion(self, engine, request):
        self._maybe_raise("on_request_completion")


class ExplodingAttention(AttentionPlugin):
    def __init__(self) -> None:
        self.fired = False

    def attend(self, layer, q, ctx, default):
        if not self.fired and layer == 1:  # mid-forward: layer 0 has already written its K/V
            self.fired = True
            raise RuntimeError("boom")
        return default(layer, q, ctx)


class ExplodingCache(RaisesOnce, CachePlugin):
    def before_append(self, layer, k, v, batch):
        self._maybe_raise("before_append")
        return k, v

    def after_append(self, layer, k, v, batch):
        self._maybe_raise("after_append")


def serve_with(make_plugin: Callable[[], object], finishing_request: bool = False) -> Callable[[Ctx], None]:
    """Add a fresh plugin to the serving engine and step until it raises (a short request makes one finish).

    A new plugin per run: one that has already fired would not raise again when the test runs twice in a process.
    """

    def trigger(ctx: Ctx) -> None:
        ctx.engine.add_plugin(make_plugin())
        if finishing_request:
            ctx.engine.add_request([7, 7], 1)
        for _ in range(20):
            ctx.engine.step()

    return trigger


def set_budget(value) -> Callable[[Ctx], None]:
    def trigger(ctx: Ctx) -> None:
        ctx.engine.budget = value
        ctx.engine.step()

    return trigger


def restore_budget(ctx: Ctx) -> None:
    ctx.engine.budget = ctx.engine.config.max_tokens_per_step


def add(**kwargs) -> Callable[[Ctx], int]:
    args = dict(prompt_ids=[4, 5], max_new_tokens=3) | kwargs
    return lambda ctx: ctx.engine.add_request(**args)


def group(**kwargs) -> Callable[[Ctx], list[int]]:
    args = dict(prompt_ids=[4, 5], n=2, max_new_tokens=3, sampling=SamplingParams(temperature=1.0)) | kwargs
    return lambda ctx: ctx.engine.add_request_group(**args)


def starve(ctx: Ctx) -> None:
    """Every token of the budget reserved for urgent requests (priority <= -1), and none is urgent."""
    ctx.engine.scheduler.reserved_tokens = ctx.engine.budget
    ctx.engine.scheduler.reserved_priority = -1
    ctx.engine.step()


def paged(num_blocks: int = 2, block_size: int = 4) -> PagedAllocator:
    return PagedAllocator(1, 1, 2, num_blocks, block_size)


def double_free(cache) -> None:
    cache.admit(0, 3)
    cache.free(0)
    cache.free(0)


def admit_twice(cache) -> None:
    cache.admit(0, 3)
    cache.admit(0, 3)


def grow(cache, reserve: int, to: int, keep_promise: bool = True) -> None:
    cache.admit(0, reserve, reserve=keep_promise)
    cache.ensure(0, to)


class ForgetfulCache(RaisesOnce, CachePlugin):
    """An observer that forgets to hand the K/V back, once."""

    def __init__(self) -> None:
        super().__init__("before_append")

    def before_append(self, layer, k, v, batch):
        if not self.fired:
            self.fired = True
            return None
        return k, v


class TrimmingCache(ForgetfulCache):
    def before_append(self, layer, k, v, batch):
        if not self.fired:
            self.fired = True
            return k[1:], v[1:]
        return k, v


class KeyTrimmingCache(ForgetfulCache):
    """Changes the keys' shape only: the check must look at each of the two."""

    def before_append(self, layer, k, v, batch):
        if not self.fired:
            self.fired = True
            return k[1:], v
        return k, v


# -- outer modules: real model shapes, GPU specs, LoRA adapters --------------------------------------


def shape(**change) -> ModelShape:
    """Llama-3.1-8B with ``change`` applied (``replace`` runs the same checks as the constructor)."""
    return replace(MODEL_SHAPES["Llama-3.1-8B"], **change)


def gpu(**change) -> GPUSpec:
    return replace(GPUS["H100-SXM"], **change)


def lora_with(matrix: str, layer: int, value: float) -> Callable[[Ctx], LoRAAdapter]:
    """A rank-2 q_proj adapter for the serving model whose ``matrix`` (A or B) of ``layer`` holds ``value``."""

    def trigger(ctx: Ctx) -> LoRAAdapter:
        good = LoRAAdapter.random(ctx.model, rank=2, targets=("q_proj",))
        weights = {"A": [t.clone() for t in good.A["q_proj"]], "B": [t.clone() for t in good.B["q_proj"]]}
        weights[matrix][layer][1, 0] = value
        return LoRAAdapter(2, 2.0, {"q_proj": weights["A"]}, {"q_proj": weights["B"]})

    return trigger


# -- the table -------------------------------------------------------------------------------------

ROWS = [
    # configuration
    Row("engine: zero budget", lambda c: EngineConfig(max_tokens_per_step=0), ConfigError,
        r"max_tokens_per_step must be an int >= 1, got 0"),
    Row("engine: bool chunk size", lambda c: EngineConfig(prefill_chunk_size=True), ConfigError,
        r"prefill_chunk_size must be an int >= 1, got True"),
    Row("engine: unknown kv_layout", lambda c: EngineConfig(kv_layout="tiled"), ConfigError,
        r"kv_layout must be one of \('dense', 'paged'\), got 'tiled'"),
    Row("engine: unknown attention", lambda c: EngineConfig(attention="flash"), ConfigError,
        r"attention must be one of .*got 'flash'"),
    Row("engine: preemption needs paged", lambda c: EngineConfig(kv_layout="dense", preemption=True), ConfigError,
        r"preemption=True needs kv_layout='paged', got 'dense'"),
    Row("engine: preemption mode not known", lambda c: EngineConfig(preemption="evict"), ConfigError,
        r"EngineConfig\.preemption must be one of \(False, True, 'recompute', 'swap'\), got 'evict'"),
    Row("engine: preemption=1", lambda c: EngineConfig(preemption=1), ConfigError,
        r"EngineConfig\.preemption must be one of .*got 1$"),
    Row("engine: preemption=None", lambda c: EngineConfig(preemption=None), ConfigError,
        r"EngineConfig\.preemption must be one of .*got None$"),
    Row("engine: prefix caching is a string", lambda c: EngineConfig(enable_prefix_caching="no"), ConfigError,
        r"EngineConfig\.enable_prefix_caching must be one of \(False, True\), got 'no'"),
    Row("engine: prefix caching is 1", lambda c: EngineConfig(enable_prefix_caching=1), ConfigError,
        r"EngineConfig\.enable_prefix_caching must be one of \(False, True\), got 1$"),
    Row("engine: draft model is not a model", lambda c: Engine(c.model, EngineConfig(speculative="draft"),
        draft_model="tiny"), ConfigError, r"draft_model must be a TinyLM, got 'tiny'"),
    Row("engine: eos id is a bool", lambda c: EngineConfig(eos_token_id=True), ConfigError,
        r"EngineConfig.eos_token_id must be None or a token id >= 0, got True"),
    Row("engine: negative eos id", lambda c: EngineConfig(eos_token_id=-1), ConfigError,
        r"eos_token_id must be None or a token id >= 0, got -1"),
    Row("engine: draft without a draft model", lambda c: Engine(c.model, EngineConfig(speculative="draft")),
        ConfigError, r"speculative='draft' needs Engine\(\.\.\., draft_model="),
    Row("engine: unknown device", lambda c: Engine(c.model, EngineConfig(device="tpu")), ConfigError,
        r"device='tpu' is not a torch device"),
    Row("engine: not a model", lambda c: Engine(None), ConfigError, r"Engine needs a TinyLM .*got None"),
    Row("engine: config is a dict", lambda c: Engine(c.model, {"max_tokens_per_step": 4}), ConfigError,
        r"must be an EngineConfig, got \{'max_tokens_per_step': 4\}"),
    Row("model: hidden not divisible by heads", lambda c: ModelConfig(hidden_size=30, num_heads=4), ConfigError,
        r"hidden_size=30 is not divisible by num_heads=4"),
    Row("model: kv heads do not divide heads", lambda c: ModelConfig(num_heads=4, num_kv_heads=3), ConfigError,
        r"num_heads=4 is not a multiple of num_kv_heads=3"),
    Row("model: odd head_dim", lambda c: ModelConfig(hidden_size=12, num_heads=4), ConfigError,
        r"head_dim=3 must be even for RoPE"),
    Row("model: zero head_dim", lambda c: ModelConfig(head_dim=0), ConfigError,
        r"ModelConfig\.head_dim must be None or a positive int, got 0"),
    Row("model: integer dtype", lambda c: ModelConfig(dtype=torch.int64), ConfigError,
        r"dtype must be a floating torch.dtype, got torch.int64"),
    Row("model: zero vocabulary", lambda c: ModelConfig(vocab_size=0), ConfigError,
        r"vocab_size must be a positive int, got 0"),
    Row("scheduler: zero chunk", lambda c: Scheduler(8, 0), ConfigError,
        r"prefill_chunk_size must be an int >= 1, got 0"),
    Row("scheduler: unknown policy", lambda c: Scheduler(8, 4, policy="lifo"), ConfigError,
        r"policy must be one of \('fcfs', 'priority'\), got 'lifo'"),
    Row("engine.budget set to 0", set_budget(0), ConfigError, r"engine.budget must be an int >= 1, got 0",
        cleanup=restore_budget),
    Row("engine.budget set to a string", set_budget("8"), ConfigError, r"engine.budget must be an int >= 1, got '8'",
        cleanup=restore_budget),
    Row("static batching: zero batch", lambda c: StaticBatchingEngine(c.model, batch_size=0), ConfigError,
        r"batch_size must be an int >= 1, got 0"),
    # requests
    Row("request: empty prompt", add(prompt_ids=[]), RequestError, r"request 1: the prompt is empty"),
    Row("request: id past the vocabulary", add(prompt_ids=[1, VOCAB]), RequestError,
        rf"token ids \[{VOCAB}\] are outside the vocabulary \[0, {VOCAB}\)"),
    Row("request: negative id", add(prompt_ids=[-1, 2]), RequestError, r"token ids \[-1\] are outside"),
    Row("request: seven ids past the vocabulary", add(prompt_ids=[1] + [VOCAB + i for i in range(7)]), RequestError,
        rf"token ids \[{VOCAB}, {VOCAB + 1}, {VOCAB + 2}, {VOCAB + 3}, {VOCAB + 4}\] are outside"),  # the first five
    Row("request: bool max_new_tokens", add(max_new_tokens=True), RequestError,
        r"max_new_tokens must be an int >= 1, got True"),
    Row("request: prompt is not ids", add(prompt_ids="abc"), RequestError,
        r"prompt_ids must be a sequence of ints, got 'abc'"),
    Row("request: float token ids", add(prompt_ids=[1.5, 2.0]), RequestError,
        r"request 1: token ids must be integers, got 1\.5 \(float\) at prompt_ids\[0\]"),
    Row("request: a whole float is still a float", add(prompt_ids=[4, 2.0]), RequestError,
        r"got 2\.0 \(float\) at prompt_ids\[1\]"),
    Row("request: string token id", add(prompt_ids=[4, "3"]), RequestError, r"got '3' \(str\) at prompt_ids\[1\]"),
    Row("request: bool token id", add(prompt_ids=[True, 2]), RequestError, r"got True \(bool\) at prompt_ids\[0\]"),
    Row("request: numpy float id", add(prompt_ids=np.array([3.0, 1.0])), RequestError,
        r"got np\.float64\(3\.0\) \(float64\) at prompt_ids\[0\]"),
    Row("request: torch float ids", add(prompt_ids=torch.tensor([3.5, 1.0])), RequestError,
        r"got tensor\(3\.5000\) \(Tensor\) at prompt_ids\[0\]"),
    Row("request: prompt is one int", add(prompt_ids=5), RequestError,
        r"request 1: prompt_ids must be a sequence of ints, got 5"),
    Row("request: None as a token id", add(prompt_ids=[1, None]), RequestError, r"got None \(NoneType\)"),
    Row("request: zero max_new_tokens", add(max_new_tokens=0), RequestError,
        r"max_new_tokens must be an int >= 1, got 0"),
    Row("request: negative max_new_tokens", add(max_new_tokens=-3), RequestError,
        r"max_new_tokens must be an int >= 1, got -3"),
    Row("request: duplicate id", add(request_id=0), DuplicateRequestError, r"request id 0 is already in use"),
    Row("request: id is not an int", add(request_id="x"), RequestError, r"request_id must be an int, got 'x'"),
    Row("request: never fits the KV pool", add(prompt_ids=[1] * 5, max_new_tokens=50), CapacityError,
        r"request 1 needs 54 KV slots but the whole pool has 48; it could never run"),
    Row("request: longer than max_position", add(prompt_ids=[1] * 5, max_new_tokens=70), RequestError,
        rf"prompt \(5\) \+ max_new_tokens \(70\) exceeds the model's max_position {MAX_POSITION}"),
    Row("request: negative temperature", add(sampling=SamplingParams(temperature=-1.0)), RequestError,
        r"invalid sampling parameters .*temperature=-1\.0"),
    Row("request: NaN temperature", add(sampling=SamplingParams(temperature=float("nan"))), RequestError,
        r"invalid sampling parameters .*temperature=nan"),
    Row("request: top_p of zero", add(sampling=SamplingParams(temperature=1.0, top_p=0.0)), RequestError,
        r"invalid sampling parameters .*top_p=0\.0"),
    Row("request: fractional top_k", add(sampling=SamplingParams(temperature=1.0, top_k=2.5)), RequestError,
        r"invalid sampling parameters .*top_k=2\.5"),
    Row("request: sampling is a dict", add(sampling={"temperature": 1.0}), RequestError,
        r"invalid sampling parameters \{'temperature': 1\.0\} \(need a SamplingParams with a finite temperature >= 0, "
        r"an int top_k >= 0 and 0 < top_p <= 1\)"),
    Row("request: priority is a string", add(priority="high"), RequestError,
        r"priority must be an int \(smaller runs first\), got 'high'"),
    Row("request: top_p above 1", add(sampling=SamplingParams(temperature=1.0, top_p=1.5)), RequestError,
        r"invalid sampling parameters .*top_p=1\.5"),
    Row("request: bool temperature", add(sampling=SamplingParams(temperature=True)), RequestError,
        r"invalid sampling parameters .*temperature=True"),
    Row("group: sampling is a dict", group(sampling={"temperature": 1.0}), RequestError,
        r"invalid sampling parameters \{'temperature': 1\.0\}"),
    Row("group: priority is a string", group(priority="high"), RequestError,
        r"priority must be an int \(smaller runs first\), got 'high'"),
    Row("request: unknown id", lambda c: c.engine.output(42), UnknownRequestError, r"unknown request id 42"),
    Row("generate: lengths do not match", lambda c: c.engine.generate([[1], [2]], [3]), RequestError,
        r"got 2 prompts but 1 max_new_tokens"),
    Row("static batching: id past the vocabulary", lambda c: StaticBatchingEngine(c.model).generate([[500]], 2),
        RequestError, r"token ids \[500\] are outside the vocabulary"),
    Row("static batching: float token id", lambda c: StaticBatchingEngine(c.model).generate([[1.5, 2.0]], 2),
        RequestError, r"prompt 0: token ids must be integers, got 1\.5 \(float\) at prompt_ids\[0\]"),
    Row("static batching: string token id", lambda c: StaticBatchingEngine(c.model).generate([[2, "3"]], 2),
        RequestError, r"prompt 0: token ids must be integers, got '3' \(str\) at prompt_ids\[1\]"),
    Row("step with nothing to run", lambda c: Engine(c.model).step(), CBLabError,
        r"^nothing to run: every request has finished; add_request\(\) first$"),
    Row("step whose whole budget is kept for nobody", starve, CBLabError,
        rf"^the scheduler made no progress \(budget={SERVING.max_tokens_per_step}\); nothing can run$",
        cleanup=lambda c: setattr(c.engine.scheduler, "reserved_tokens", 0)),
    # KV caches
    Row("paged: double free", lambda c: double_free(paged()), KVCacheError,
        r"request 0 has no KV to free \(double free\?\)"),
    Row("dense: double free", lambda c: double_free(DenseKVCache(1, 1, 2, 16)), KVCacheError,
        r"request 0 has no KV to free \(double free\?\)"),
    Row("engine kv: free an unknown request", lambda c: c.engine.kv.free(99), KVCacheError,
        r"request 99 has no KV to free"),
    Row("engine kv: flatten an unknown request", lambda c: c.engine.kv.flatten(0, 99), KVCacheError,
        r"requests \[99\] have no KV in this cache"),
    Row("engine kv: grow an unknown request", lambda c: c.engine.kv.ensure(99, 4), KVCacheError,
        r"request 99 has no KV in this cache"),
    Row("paged: admit twice", lambda c: admit_twice(paged()), KVCacheError, r"request 0 already has KV"),
    Row("paged: pool exhausted", lambda c: grow(paged(), 3, 100, keep_promise=False), KVCacheError,
        r"the block pool is exhausted while growing request 0"),
    Row("dense: grow past the reservation", lambda c: grow(DenseKVCache(1, 1, 2, 16), 3, 5), KVCacheError,
        r"request 0 needs 5 slots but reserved 3"),
    Row("paged: empty pool", lambda c: paged(num_blocks=0), ConfigError,
        r"num_blocks and block_size must be >= 1, got 0 and 4"),
    # plugins
    Row("plugin raises in before_step", serve_with(lambda: Exploding("before_step")), PluginError,
        r"plugin Exploding\.before_step\(\) raised RuntimeError: boom"),
    Row("plugin raises in after_step", serve_with(lambda: Exploding("after_step")), PluginError,
        r"plugin Exploding\.after_step\(\) raised RuntimeError: boom"),
    Row("plugin raises in on_request_completion", serve_with(lambda: Exploding("on_request_completion"), True),
        PluginError,
        r"plugin Exploding\.on_request_completion\(\) raised RuntimeError: boom"),
    Row("plugin raises in attend", serve_with(lambda: ExplodingAttention()), PluginError,
        r"plugin ExplodingAttention\.attend\(\) raised RuntimeError: boom"),
    Row("plugin raises in before_append", serve_with(lambda: ExplodingCache("before_append")), PluginError,
        r"plugin ExplodingCache\.before_append\(\) raised RuntimeError: boom"),
    Row("plugin raises in after_append", serve_with(lambda: ExplodingCache("after_append")), PluginError,
        r"plugin ExplodingCache\.after_append\(\) raised RuntimeError: boom"),
    Row("plugin: before_append returns None", serve_with(lambda: ForgetfulCache()), PluginError,
        r"plugin ForgetfulCache\.before_append\(\) must return the \(k, v\) to store, got None "
        r"\(an observer returns them unchanged: return k, v\)"),
    Row("plugin: before_append drops a token", serve_with(lambda: TrimmingCache()), PluginError,
        r"plugin TrimmingCache\.before_append\(\) changed the K/V shapes"),
    Row("plugin: before_append drops a key only", serve_with(lambda: KeyTrimmingCache()), PluginError,  # (n, h, d) twice, to (fewer, h, d), (n, h, d)
        r"changed the K/V shapes \((\d+), (\d+), (\d+)\), \(\1, \2, \3\) to \((?!\1,)\d+, \2, \3\), \(\1, \2, \3\)$"),
    Row("add_plugin: not a plugin", lambda c: c.engine.add_plugin(object()), PluginError,
        r"<object object at .*> is not a SchedulerPlugin, AttentionPlugin or CachePlugin"),
    Row("add_plugin: the class, not an instance", lambda c: c.engine.add_plugin(SchedulerPlugin), PluginError,
        r"<class '.*SchedulerPlugin'> is not a SchedulerPlugin"),
    # visual layer
    Row("viz: unknown player view", lambda c: StepPlayer(c.records("paged"), view="heatmap"),
        UnknownViewError, r"unknown view 'heatmap'"),
    Row("viz: player step out of range", lambda c: StepPlayer(c.records("paged")).show_step(999),
        StepOutOfRangeError, r"step 999 is out of range: this run has \d+ steps"),
    Row("viz: mask step out of range", lambda c: mask_figure(c.records("paged"), step=-999), StepOutOfRangeError,
        r"step -999 is out of range"),
    Row("viz: no records", lambda c: budget_figure([]), NoRecordsError, r"no StepRecords to draw"),
    Row("viz: block map of a dense run", lambda c: block_map_figure(c.records("dense")), NotPagedError,
        r"these records have no block tables .*kv_layout='paged'"),
    # outer modules: ModelConfig field types, production ModelShape / GPUSpec, LoRA adapters
    Row("model: kv heads is a string", lambda c: ModelConfig(num_kv_heads="2"), ConfigError,
        r"^ModelConfig\.num_kv_heads must be None or a positive int, got '2'$"),
    Row("model: kv heads is a float", lambda c: ModelConfig(num_kv_heads=2.0), ConfigError,
        r"^ModelConfig\.num_kv_heads must be None or a positive int, got 2\.0$"),
    Row("model: zero kv heads", lambda c: ModelConfig(num_kv_heads=0), ConfigError,
        r"^ModelConfig\.num_kv_heads must be None or a positive int, got 0$"),
    Row("model: bool layer count", lambda c: ModelConfig(num_layers=True), ConfigError,
        r"^ModelConfig\.num_layers must be a positive int, got True$"),
    Row("model: bool rope_theta", lambda c: ModelConfig(rope_theta=True), ConfigError,
        r"^ModelConfig\.rope_theta must be a finite number > 0, got True$"),
    Row("model: infinite rms_norm_eps", lambda c: ModelConfig(rms_norm_eps=float("inf")), ConfigError,
        r"^ModelConfig\.rms_norm_eps must be a finite number > 0, got inf$"),
    Row("model shape: zero kv heads", lambda c: shape(kv_heads=0), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': kv_heads must be an int >= 1, got 0$"),
    Row("model shape: negative layers", lambda c: shape(layers=-2), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': layers must be an int >= 1, got -2$"),
    Row("model shape: float head_dim", lambda c: shape(head_dim=128.0), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': head_dim must be an int >= 1, got 128\.0$"),
    Row("model shape: bool params", lambda c: shape(params=True), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': params must be an int >= 1, got True$"),
    Row("model shape: string q heads", lambda c: shape(q_heads="32"), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': q_heads must be an int >= 1, got '32'$"),
    Row("model shape: zero sliding window", lambda c: shape(sliding_window=0, sliding_layers=2), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': sliding_window must be None or an int >= 1, got 0$"),
    Row("model shape: negative sliding layers", lambda c: shape(sliding_layers=-1), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': sliding_layers must be an int in \[0, layers=32\], got -1$"),
    Row("model shape: more sliding layers than layers", lambda c: shape(sliding_window=4096, sliding_layers=33),
        ConfigError, r"sliding_layers must be an int in \[0, layers=32\], got 33$"),
    Row("model shape: sliding layers without a window", lambda c: shape(sliding_layers=4), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': sliding_layers=4 needs a sliding_window, got None$"),
    Row("model shape: q heads not a multiple of kv heads", lambda c: shape(kv_heads=5), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': q_heads=32 is not a multiple of kv_heads=5$"),
    Row("model shape: more active params than params", lambda c: shape(active_params=9_000_000_000), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': active_params=9000000000 exceeds params=8030261248$"),
    Row("model shape: MLA latent without its value width", lambda c: shape(kv_latent_dim=576), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': MLA needs kv_latent_dim and v_head_dim together, got 576 and None$"),
    Row("gpu: zero bandwidth", lambda c: gpu(bandwidth_gbs=0), ConfigError,
        r"^GPUSpec 'H100-SXM': bandwidth_gbs must be a finite number > 0, got 0$"),
    Row("gpu: negative memory", lambda c: gpu(memory_gib=-80), ConfigError,
        r"^GPUSpec 'H100-SXM': memory_gib must be a finite number > 0, got -80$"),
    Row("gpu: string throughput", lambda c: gpu(bf16_tflops="989"), ConfigError,
        r"^GPUSpec 'H100-SXM': bf16_tflops must be a finite number > 0, got '989'$"),
    Row("gpu: bool throughput", lambda c: gpu(int8_tops=True), ConfigError,
        r"^GPUSpec 'H100-SXM': int8_tops must be a finite number > 0, got True$"),
    Row("gpu: NaN bandwidth", lambda c: gpu(bandwidth_gbs=float("nan")), ConfigError,
        r"^GPUSpec 'H100-SXM': bandwidth_gbs must be a finite number > 0, got nan$"),
    Row("gpu: zero fp8", lambda c: gpu(fp8_tflops=0.0), ConfigError,
        r"^GPUSpec 'H100-SXM': fp8_tflops must be None \(no FP8\) or a finite number > 0, got 0\.0$"),
    Row("gpu: zero fp32", lambda c: gpu(fp32_tflops=0), ConfigError,
        r"^GPUSpec 'H100-SXM': fp32_tflops must be None \(not recorded\) or a finite number > 0, got 0$"),
    Row("model shape: bool tied embeddings", lambda c: shape(tied_embeddings=1), ConfigError,
        r"^ModelShape 'Llama-3\.1-8B': tied_embeddings must be True or False, got 1$"),
    Row("step time: unknown model", lambda c: step_time("Llama-9B", "H100-SXM", [16]), ConfigError,
        r"^unknown model shape 'Llama-9B'; accepted: \[.*'Llama-3\.1-8B'.*\] or a ModelShape$"),
    Row("step time: negative context before a chunk", lambda c: step_time("Llama-3.1-8B", "H100-SXM", [], [(8, -1)]),
        ConfigError, r"^prefill_chunks: length must be an int >= 1 and context_before an int >= 0, got \(8, -1\)$"),
    Row("step time: negative decode context", lambda c: step_time("Llama-3.1-8B", "H100-SXM", [-4]), ConfigError,
        r"^decode_contexts: a context is an int >= 1 .*got -4$"),
    Row("step time: unknown dtype", lambda c: step_time("Llama-3.1-8B", "H100-SXM", [16], dtype="bf17"), ConfigError,
        r"^unknown dtype 'bf17'; accepted: \[.*'bf16'.*\]$"),
    Row("lora: string seed", lambda c: LoRAAdapter.random(c.model, seed="x"), AdapterError,
        r"^LoRAAdapter\.random: seed must be an int in \[-2\*\*63, 2\*\*64\), got 'x'$"),
    Row("lora: bool seed", lambda c: LoRAAdapter.random(c.model, seed=True), AdapterError,
        r"seed must be an int in .*got True$"),
    Row("lora: seed past torch's range", lambda c: LoRAAdapter.random(c.model, seed=2**64), AdapterError,
        r"seed must be an int in .*got 18446744073709551616$"),
    Row("lora: NaN std", lambda c: LoRAAdapter.random(c.model, std=float("nan")), AdapterError,
        r"^LoRAAdapter\.random: std must be a finite number >= 0, got nan$"),
    Row("lora: string std", lambda c: LoRAAdapter.random(c.model, std="0.1"), AdapterError,
        r"^LoRAAdapter\.random: std must be a finite number >= 0, got '0\.1'$"),
    Row("lora: string alpha", lambda c: LoRAAdapter.random(c.model, alpha="2"), AdapterError,
        r"^LoRA alpha must be a finite number > 0, got '2'$"),
    Row("lora: NaN in A", lora_with("A", 1, float("nan")), AdapterError,
        r"^q_proj layer 1: A\[1, 0\] is nan; LoRA weights must be finite$"),
    Row("lora: inf in B", lora_with("B", 0, float("-inf")), AdapterError,
        r"^q_proj layer 0: B\[1, 0\] is -inf; LoRA weights must be finite$"),
    Row("lora: weights overflow float32", lambda c: lora_with("A", 0, 1e300)(c).to(torch.float32), AdapterError,
        r"^q_proj layer 0: A\[1, 0\] is inf; LoRA weights must be finite$"),  # finite in float64, not in float32
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_runs(model):
    cache: dict[str, list] = {}

    def records(layout: str) -> list:
        if layout not in cache:
            engine = Engine(model, EngineConfig(max_tokens_per_step=6, kv_layout=layout, block_size=4, num_blocks=16))
            for prompt in ([1, 2, 3, 4, 5], [6, 7], [8, 9, 10]):
                engine.add_request(prompt, 3)
            cache[layout] = engine.run()
        return cache[layout]

    return records


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input_gets_a_typed_error_and_the_engine_carries_on(row: Row, model, finished_runs, alone) -> None:
    engine = Engine(model, SERVING)
    good = engine.add_request(GOOD_PROMPT, GOOD_NEW, request_id=0)
    engine.step()
    engine.step()  # the good request is mid-prefill: it holds KV and has work left
    ctx = Ctx(engine, model, finished_runs)
    error = row.error

    with pytest.raises(CBLabError) as info:
        row.trigger(ctx)
    assert type(info.value) is error, f"{row.name}: got {type(info.value).__name__}: {info.value}"
    assert re.search(row.message, str(info.value)), f"{row.name}: message {str(info.value)!r}"

    if row.cleanup:
        row.cleanup(ctx)
    engine.run()
    assert engine.output(good) == alone(GOOD_PROMPT, GOOD_NEW)
    for rid, req in engine.requests.items():  # anything the row added also finished, and correctly
        assert req.is_finished
        assert engine.output(rid) == alone(req.prompt_ids, req.max_new_tokens)
    assert not engine.kv.lengths and sorted(engine.kv.free_blocks) == list(range(SERVING.num_blocks))


def test_the_table_is_broad() -> None:
    assert len(ROWS) >= 20
    assert len({r.name for r in ROWS}) == len(ROWS)
    kinds = {r.error for r in ROWS}
    for needed in (ConfigError, RequestError, DuplicateRequestError, CapacityError, UnknownRequestError):
        assert needed in kinds
    assert KVCacheError in kinds and PluginError in kinds


def test_a_rejected_request_leaves_no_trace(model) -> None:
    """Rejected requests neither take an id nor sit in the queue: the next request gets the next id."""
    engine = Engine(model, SERVING)
    engine.add_request([1, 2], 2)
    for bad in (dict(prompt_ids=[]), dict(prompt_ids=[1], priority="high"), dict(prompt_ids=[1], max_new_tokens=0)):
        with pytest.raises(RequestError):
            engine.add_request(**(dict(max_new_tokens=2) | bad))
    assert list(engine.requests) == [0] and [r.request_id for r in engine.waiting] == [0]
    assert engine.add_request([3], 2) == 1


@pytest.mark.parametrize(
    "prompt",
    [
        [3, 1, 4],
        [np.int64(3), np.int32(1), np.uint8(4)],
        np.array([3, 1, 4]),
        torch.tensor([3, 1, 4]),
        [torch.tensor(3), torch.tensor(1, dtype=torch.int32), torch.tensor(4, dtype=torch.uint8)],
        (3, 1, 4),
    ],
    ids=["python", "numpy scalars", "numpy array", "torch tensor", "torch scalars", "tuple"],
)
def test_integer_token_ids_of_any_kind_are_accepted(model, alone, prompt) -> None:
    engine = Engine(model, SERVING)
    rid = engine.add_request(prompt, 4)
    assert engine.request(rid).prompt_ids == [3, 1, 4] and all(type(t) is int for t in engine.request(rid).prompt_ids)
    engine.run()
    assert engine.output(rid) == alone([3, 1, 4], 4)


def test_a_request_that_exactly_reaches_max_position_is_served(model):
    """prompt + max_new_tokens == max_position is the longest allowed; one more token is refused."""
    engine = Engine(model, EngineConfig(max_tokens_per_step=64, prefill_chunk_size=64, block_size=8, num_blocks=8))
    rid = engine.add_request([2] * (MAX_POSITION - 3), 3)
    with pytest.raises(RequestError, match="exceeds the model's max_position"):
        engine.add_request([2] * (MAX_POSITION - 3), 4)
    engine.run()
    assert engine.output(rid) == greedy(model, [2] * (MAX_POSITION - 3), 3)


@pytest.mark.parametrize("layout", ["dense", "paged"])
def test_a_request_that_exactly_fills_the_pool_is_served(model, layout):
    """prompt + max_new_tokens - 1 K/V slots (the last token is never stored) equal to the pool is the most a
    request may need; one more slot and it could never run."""
    config = replace(SERVING, kv_layout=layout)
    engine = Engine(model, config)
    slots = config.num_slots
    rid = engine.add_request([2] * 9, slots - 8)
    with pytest.raises(CapacityError, match=f"needs {slots + 1} KV slots but the whole pool has {slots}"):
        engine.add_request([2] * 9, slots - 7)
    engine.run()
    assert engine.output(rid) == greedy(model, [2] * 9, slots - 8)


def test_token_id_zero_is_a_valid_end_token():
    """0 is the lowest token id, not a missing one: it is accepted as the engine's end token."""
    assert EngineConfig(eos_token_id=0).eos_token_id == 0
