"""Many LoRA adapters in one batch: each request's tokens equal running it alone on its merged model."""

from __future__ import annotations

import copy
import itertools
import re
from types import SimpleNamespace

import pytest
import torch

from cblab_teach import CBLabError, ConfigError, Engine, EngineConfig, ModelConfig, TinyLM
from cblab_teach.advanced.lora import PROJECTIONS, LoRAAdapter, LoRALinear, projection, router_of
from cblab_teach.errors import AdapterError, DuplicateAdapterError, UnknownAdapterError
from cblab_teach.workloads import make_workload

from .helpers import run_alone

# three adapters of different ranks and targets, and requests with none
TARGETS = {
    "attn": ("q_proj", "v_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all": tuple(PROJECTIONS),
}
RANKS = {"attn": 2, "mlp": 4, "all": 1}
ROUTE = ["attn", None, "mlp", "all", "attn", None, "all", "mlp", "attn"]  # request i uses ROUTE[i]


@pytest.fixture(scope="module")
def model() -> TinyLM:
    """float64 so merged (W + sBA) and unmerged (W, then + sBA) agree to the last greedy token."""
    cfg = ModelConfig(
        vocab_size=97, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, dtype=torch.float64
    )
    return TinyLM(cfg, seed=1)


@pytest.fixture(scope="module")
def adapters(model) -> dict[str, LoRAAdapter]:
    def make(name: str, seed: int) -> LoRAAdapter:
        rank = RANKS[name]
        return LoRAAdapter.random(model, rank=rank, targets=TARGETS[name], alpha=2.0 * rank, seed=seed, std=0.3)

    return {name: make(name, i) for i, name in enumerate(TARGETS)}


@pytest.fixture(scope="module")
def workload():
    return make_workload(len(ROUTE), (2, 17), (2, 9), vocab_size=97, seed=5)


@pytest.fixture(scope="module")
def merged(model, adapters) -> dict[str | None, TinyLM]:
    return {None: model} | {name: a.merged_into(model) for name, a in adapters.items()}


@pytest.fixture(scope="module")
def alone(merged, workload) -> list[list[int]]:
    """The reference: each request by itself, on a plain TinyLM with its adapter merged into the weights."""
    return [run_alone(merged[a], p, n) for p, n, a in zip(workload.prompts, workload.max_new_tokens, ROUTE)]


def serve(model, adapters, workload, route=ROUTE, **cfg) -> tuple[Engine, list[int]]:
    engine = Engine(model, EngineConfig(**cfg))
    for name, a in adapters.items():
        engine.add_adapter(name, a)
    ids = [engine.add_request(p, n, adapter=a) for p, n, a in zip(workload.prompts, workload.max_new_tokens, route)]
    engine.run()
    return engine, ids


SETTINGS = [
    dict(max_tokens_per_step=b, prefill_chunk_size=c, kv_layout=kv, block_size=4, num_blocks=64)
    for (b, c), kv in itertools.product([(3, 2), (8, 3), (64, 64)], ["dense", "paged"])
]


@pytest.mark.parametrize(
    "cfg", SETTINGS, ids=lambda c: f"b{c['max_tokens_per_step']}-c{c['prefill_chunk_size']}-{c['kv_layout']}"
)
def test_mixed_adapter_batch_equals_each_request_alone_on_its_merged_model(model, adapters, workload, alone, cfg):
    engine, ids = serve(model, adapters, workload, **cfg)
    assert [engine.output(i) for i in ids] == alone
    mixed = [r for r in engine.records if len({engine.request(c.request_id).adapter for c in r.plan.chunks}) >= 3]
    assert mixed, "no step served three or more adapters (or none) together: the test would prove nothing"


def test_the_adapters_change_the_outputs(model, workload, alone):
    """Otherwise the equality above would hold for an engine that ignores adapters."""
    base = [run_alone(model, p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    for i, name in enumerate(ROUTE):
        assert (alone[i] == base[i]) == (name is None), (i, name)


def test_preemption_and_the_flatten_read_keep_adapter_outputs(model, adapters, workload, alone):
    engine, ids = serve(
        model, adapters, workload, max_tokens_per_step=8, prefill_chunk_size=4, block_size=4, num_blocks=7,
        preemption=True, kv_read="flatten", attention="ragged",
    )  # fmt: skip
    assert engine.stats.preemptions > 0
    assert [engine.output(i) for i in ids] == alone


def test_speculative_verification_uses_each_requests_adapter(model, adapters, workload, alone):
    repetitive = [p + p for p in workload.prompts]  # prompt lookup finds guesses here
    doubled = SimpleNamespace(prompts=repetitive, max_new_tokens=workload.max_new_tokens)
    engine, ids = serve(
        model, adapters, doubled, speculative="ngram", num_speculative_tokens=3, max_tokens_per_step=16,
        prefill_chunk_size=8,
    )  # fmt: skip
    assert engine.stats.draft_tokens > 0
    merged = {None: model} | {n: a.merged_into(model) for n, a in adapters.items()}
    expected = [run_alone(merged[a], p, n) for p, n, a in zip(repetitive, workload.max_new_tokens, ROUTE)]
    assert [engine.output(i) for i in ids] == expected


def test_merged_into_adds_scaled_b_times_a_and_leaves_the_model_alone(model, adapters):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = adapters["mlp"]
    m = a.merged_into(model)
    assert type(m) is TinyLM and not any(isinstance(x, LoRALinear) for x in m.modules())
    assert a.scaling == pytest.approx(a.alpha / a.rank) == pytest.approx(2.0)
    for layer in range(model.config.num_layers):
        for name in PROJECTIONS:
            w0 = before[f"layers.{layer}.{'mlp' if name in TARGETS['mlp'] else 'self_attn'}.{name}.weight"]
            expected = w0 + 2.0 * a.B[name][layer] @ a.A[name][layer] if name in a.targets else w0
            assert torch.allclose(projection(m, layer, name).weight, expected, atol=1e-14, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_shared_model_stays_the_base_model_for_other_engines(adapters, workload):
    """Adapters belong to the engine they were added to; the model's wrappers are inert outside its forward."""
    cfg = ModelConfig(vocab_size=97, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64,
                      dtype=torch.float64)  # fmt: skip
    shared = TinyLM(cfg, seed=1)
    untouched = copy.deepcopy(shared)
    lora = Engine(shared, EngineConfig(max_tokens_per_step=6, prefill_chunk_size=3))
    plain = Engine(shared, EngineConfig(max_tokens_per_step=6, prefill_chunk_size=3))
    for name, a in adapters.items():
        lora.add_adapter(name, a)
    assert isinstance(shared.layers[0].self_attn.q_proj, LoRALinear)
    lora_ids = [lora.add_request(p, n, adapter="all") for p, n in zip(workload.prompts, workload.max_new_tokens)]
    plain_ids = [plain.add_request(p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    while lora.has_unfinished() or plain.has_unfinished():  # interleave the two engines' steps
        for e in (lora, plain):
            if e.has_unfinished():
                e.step()
    base = [run_alone(untouched, p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    assert [plain.output(i) for i in plain_ids] == base
    merged = adapters["all"].merged_into(untouched)
    assert [lora.output(i) for i in lora_ids] == [
        run_alone(merged, p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)
    ]
    assert shared.state_dict().keys() == untouched.state_dict().keys()


def test_rows_are_grouped_by_adapter(model, adapters):
    engine = Engine(model, EngineConfig(max_tokens_per_step=32, prefill_chunk_size=8))
    for name, a in adapters.items():
        engine.add_adapter(name, a)
    route = ["mlp", None, "mlp", "attn"]
    for i, name in enumerate(route):
        engine.add_request([1 + i] * (i + 2), 2, adapter=name)
    seen = []
    original = router_of(engine).begin

    def spy(batch, requests):
        original(batch, requests)
        seen.append({name: rows.tolist() for name, rows, _ in router_of(engine).groups(batch, requests)})

    router_of(engine).begin = spy
    engine.step()
    # prompts of 2, 3, 4, 5 tokens, concatenated: rows 0-1 | 2-4 | 5-8 | 9-13
    assert seen[0] == {"attn": [9, 10, 11, 12, 13], "mlp": [0, 1, 5, 6, 7, 8]}
    assert router_of(engine).slot.active is None  # cleared after the forward


def test_a_handed_over_request_keeps_its_adapter(model, adapters, merged):
    prompt = [4, 8, 15, 16, 23, 42]
    first = Engine(model, EngineConfig(max_tokens_per_step=4, prefill_chunk_size=4, block_size=4))
    second = Engine(model, EngineConfig(kv_layout="dense"))
    for e in (first, second):
        e.add_adapter("attn", adapters["attn"])
    rid = first.add_request(prompt, 7, adapter="attn")
    while not first.request(rid).output_ids:
        first.step()
    handoff = first.export_prefilled(rid)
    without = Engine(model, EngineConfig(kv_layout="dense"))  # no adapter of that name: refused, nothing added
    with pytest.raises(UnknownAdapterError, match=rf"^request {rid}: unknown adapter 'attn'; known: \[\] \(add_adapter first\)$"):
        without.import_prefilled(handoff)
    assert not without.requests
    second.import_prefilled(handoff)
    second.run()
    assert second.output(rid) == run_alone(merged["attn"], prompt, 7)


# -- bad input ----------------------------------------------------------------------------------------------


def other_shape_adapter(model):
    cfg = ModelConfig(vocab_size=97, hidden_size=48, num_heads=4, num_kv_heads=2, intermediate_size=64,
                      dtype=torch.float64)  # fmt: skip
    return LoRAAdapter.random(cfg, rank=2)


def wrong_rank_adapter(model):
    a = LoRAAdapter.random(model, rank=2, targets=("q_proj",))
    return LoRAAdapter(3, 3.0, a.A, a.B)


def wrong_layers_adapter(model):
    a = LoRAAdapter.random(model, rank=2, targets=("q_proj",))
    return LoRAAdapter(2, 2.0, {"q_proj": a.A["q_proj"][:1]}, {"q_proj": a.B["q_proj"][:1]})


def with_prefix_caching(model):
    return Engine(model, EngineConfig(enable_prefix_caching=True))


BAD = [
    ("unknown adapter name", lambda e, m, a: e.add_request([1, 2], 3, adapter="nope"), UnknownAdapterError,
     r"unknown adapter 'nope'; known: \['attn', 'mlp'\]"),
    ("adapter name is not a str", lambda e, m, a: e.add_request([1, 2], 3, adapter=3), UnknownAdapterError,
     r"unknown adapter 3"),
    ("duplicate adapter name", lambda e, m, a: e.add_adapter("attn", a["all"]), DuplicateAdapterError,
     r"adapter name 'attn' is already registered"),
    ("not an adapter", lambda e, m, a: e.add_adapter("x", {"rank": 2}), AdapterError,
     r"needs a LoRAAdapter, got \{'rank': 2\}"),
    ("empty adapter name", lambda e, m, a: e.add_adapter("", a["all"]), AdapterError,
     r"adapter name must be a non-empty str, got ''"),
    ("shape mismatch with the model", lambda e, m, a: e.add_adapter("x", other_shape_adapter(m)), AdapterError,
     r"q_proj layer 0: A \[2, 48\] and B \[48, 2\] do not fit the model's q_proj \[32, 32\]"),
    ("layer count mismatch", lambda e, m, a: e.add_adapter("x", wrong_layers_adapter(m)), AdapterError,
     r"adapter has 1 layers but the model has 2"),
    ("rank mismatch", lambda e, m, a: wrong_rank_adapter(m), AdapterError,
     r"q_proj layer 0: rank mismatch: A is \[2, 32\] and B is \[32, 2\], expected A \[3, in\]"),
    ("zero rank", lambda e, m, a: LoRAAdapter.random(m, rank=0), AdapterError, r"rank must be an int >= 1, got 0"),
    ("unknown target", lambda e, m, a: LoRAAdapter.random(m, targets=("qkv_proj",)), AdapterError,
     r"unknown target projections \['qkv_proj'\]"),
    ("negative alpha", lambda e, m, a: LoRAAdapter.random(m, alpha=-1.0), AdapterError,
     r"alpha must be a finite number > 0, got -1\.0"),
    ("prefix caching on", lambda e, m, a: with_prefix_caching(m).add_adapter("x", a["all"]), ConfigError,
     r"adapter 'x': LoRA requests cannot share cached prefix blocks keyed by tokens alone \(their K/V differ per "
     r"adapter; vLLM adds the LoRA id to the block hash\); use enable_prefix_caching=False$"),
]  # fmt: skip


@pytest.mark.parametrize("trigger,error,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_adapter_input_gets_a_typed_error_and_the_others_finish_unchanged(
    model, adapters, merged, trigger, error, message
):
    engine = Engine(model, EngineConfig(max_tokens_per_step=6, prefill_chunk_size=3, block_size=4, num_blocks=32))
    engine.add_adapter("attn", adapters["attn"])
    engine.add_adapter("mlp", adapters["mlp"])
    running = {engine.add_request([3, 1, 4, 1, 5], 6, adapter="attn"): "attn",
               engine.add_request([9, 2, 6], 5, adapter="mlp"): "mlp",
               engine.add_request([5, 3, 5, 8], 4): None}  # fmt: skip
    engine.step()
    engine.step()
    with pytest.raises(CBLabError) as info:
        trigger(engine, model, adapters)
    assert type(info.value) is error, f"got {type(info.value).__name__}: {info.value}"
    assert re.search(message, str(info.value)), str(info.value)
    engine.run()
    for rid, name in running.items():
        req = engine.request(rid)
        assert engine.output(rid) == run_alone(merged[name], req.prompt_ids, req.max_new_tokens)
    assert set(engine.requests) == set(running) and sorted(engine.adapters) == ["attn", "mlp"]


def _pair(rank: int = 2, out_f: int = 32, in_f: int = 32, layers: int = 2) -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(rank, in_f, generator=g, dtype=torch.float64) for _ in range(layers)]
    b = [torch.randn(out_f, rank, generator=g, dtype=torch.float64) for _ in range(layers)]
    return a, b


A2, B2 = _pair()
MALFORMED_ADAPTERS = [
    ("bool rank", dict(rank=True), r"LoRA rank must be an int >= 1, got True"),
    ("float rank", dict(rank=2.0), r"LoRA rank must be an int >= 1, got 2\.0"),
    ("bool alpha", dict(alpha=True), r"LoRA alpha must be a finite number > 0, got True"),
    ("string alpha", dict(alpha="2"), r"LoRA alpha must be a finite number > 0, got '2'"),
    ("zero alpha", dict(alpha=0.0), r"LoRA alpha must be a finite number > 0, got 0\.0"),
    ("infinite alpha", dict(alpha=float("inf")), r"LoRA alpha must be a finite number > 0, got inf"),
    ("A is a list", dict(A=A2), r"^LoRA A and B must be non-empty dicts: projection name -> one tensor per layer$"),
    ("B is a list", dict(B=B2), r"^LoRA A and B must be non-empty dicts"),
    ("no targets", dict(A={}, B={}), r"^LoRA A and B must be non-empty dicts"),
    ("A and B target different projections", dict(B={"v_proj": B2}),
     r"^A targets \['q_proj'\] but B targets \['v_proj'\]; they must match$"),
    ("unknown projection", dict(A={"qkv": A2}, B={"qkv": B2}),
     r"^unknown target projections \['qkv'\]; choose from \['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj'"),
    ("A and B with different layer counts", dict(B={"q_proj": B2[:1]}),
     r"^every target needs the same number \(>= 1\) of per-layer matrices, got \[1, 2\]$"),
    ("no layers", dict(A={"q_proj": []}, B={"q_proj": []}), r"per-layer matrices, got \[0\]$"),
    ("A is 1-D", dict(A={"q_proj": [A2[0][0], A2[1]]}), r"^q_proj layer 0: A must be a 2-D floating tensor, got \(32,\)$"),
    ("B holds ints", dict(B={"q_proj": [B2[0], B2[1].long()]}),
     r"^q_proj layer 1: B must be a 2-D floating tensor, got \(32, 2\)$"),
    ("A is a list of lists", dict(A={"q_proj": [A2[0].tolist(), A2[1]]}),
     r"^q_proj layer 0: A must be a 2-D floating tensor, got list$"),
    ("only B has the wrong rank", dict(B={"q_proj": _pair(rank=3)[1]}),
     r"^q_proj layer 0: rank mismatch: A is \[2, 32\] and B is \[32, 3\], expected A \[2, in\] and B \[out, 2\]$"),
]  # fmt: skip


@pytest.mark.parametrize("change,message", [m[1:] for m in MALFORMED_ADAPTERS], ids=[m[0] for m in MALFORMED_ADAPTERS])
def test_a_malformed_adapter_is_refused_with_what_is_wrong(change, message):
    fields = dict(rank=2, alpha=4.0, A={"q_proj": A2}, B={"q_proj": B2}) | change
    with pytest.raises(AdapterError, match=message):
        LoRAAdapter(**fields)


def test_a_well_formed_adapter_is_accepted_and_moves_to_another_dtype(model):
    """alpha below 1 is a valid (small) scaling; ``to`` converts every matrix and keeps the adapter equal."""
    small = LoRAAdapter(2, 0.5, {"q_proj": A2}, {"q_proj": B2})
    assert small.scaling == 0.25
    moved = small.to(torch.float32)
    tensors = [t for d in (moved.A, moved.B) for ts in d.values() for t in ts]
    assert {(t.dtype, t.device.type) for t in tensors} == {(torch.float32, "cpu")}
    torch.testing.assert_close(moved.delta("q_proj", 1), small.delta("q_proj", 1).float())
    assert moved.A["q_proj"][0] is not small.A["q_proj"][0]  # a copy, not a view of the original


def test_an_adapter_that_does_not_fit_the_model_says_which_matrix(model):
    """Only B's output size is wrong (A fits): the check still names the projection and both shapes."""
    a, b = _pair(out_f=33)
    with pytest.raises(AdapterError, match=r"q_proj layer 0: A \[2, 32\] and B \[33, 2\] do not fit the model's "
                                           r"q_proj \[32, 32\]: need A \[2, 32\] and B \[32, 2\]"):  # fmt: skip
        LoRAAdapter(2, 2.0, {"q_proj": a}, {"q_proj": b}).check_fits(model)
    with pytest.raises(AdapterError, match=r"a LoRA adapter applies to a TinyLM, got 'gpt2'"):
        LoRAAdapter(2, 2.0, {"q_proj": A2}, {"q_proj": B2}).check_fits("gpt2")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(rank=True), r"LoRA rank must be an int >= 1, got True"),
        (dict(rank=2.5), r"LoRA rank must be an int >= 1, got 2\.5"),
        (dict(targets=()), r"unknown target projections \[\]; choose from \['q_proj'"),
        (dict(targets=("q_proj", "qkv")), r"unknown target projections \['qkv'\]; choose"),
    ],
)
def test_a_random_adapter_checks_what_it_is_asked_for(model, kwargs, message):
    with pytest.raises(AdapterError, match=message):
        LoRAAdapter.random(model, **kwargs)


def test_a_random_adapter_is_seeded_and_scaled_by_std(model):
    """Same seed, same adapter; another seed, another; std scales every matrix (and only that)."""
    base = LoRAAdapter.random(model, rank=2, seed=3, std=0.1)
    same, other = LoRAAdapter.random(model, rank=2, seed=3, std=0.1), LoRAAdapter.random(model, rank=2, seed=4)
    doubled = LoRAAdapter.random(model.config, rank=2, seed=3, std=0.2)
    for name in base.targets:
        for layer in range(base.num_layers):
            assert torch.equal(base.A[name][layer], same.A[name][layer])
            assert not torch.equal(base.A[name][layer], other.A[name][layer])
            torch.testing.assert_close(doubled.A[name][layer], 2 * base.A[name][layer])
            torch.testing.assert_close(doubled.B[name][layer], 2 * base.B[name][layer])
    with pytest.raises(AdapterError, match=r"LoRAAdapter.random needs a TinyLM or a ModelConfig, got 'gpt2'"):
        LoRAAdapter.random("gpt2")


def test_an_adapter_in_another_dtype_is_converted_to_the_models(model, adapters):
    """A float32 adapter added to a float64 engine is kept in float64 (a matmul cannot mix them) and serves the
    same tokens as the float64 adapter would, on its merged model."""
    engine = Engine(model, EngineConfig(block_size=4))
    engine.add_adapter("attn", adapters["attn"].to(torch.float32))
    stored = engine.adapters["attn"]
    assert {t.dtype for d in (stored.A, stored.B) for ts in d.values() for t in ts} == {torch.float64}
    rid = engine.add_request([3, 1, 4, 1, 5], 6, adapter="attn")
    engine.run()
    reference = adapters["attn"].to(torch.float32).to(torch.float64).merged_into(model)
    assert engine.output(rid) == run_alone(reference, [3, 1, 4, 1, 5], 6)
