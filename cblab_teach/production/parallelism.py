"""Serving one model on several GPUs: what each GPU holds, what crosses the wire, and what it costs.

**Tensor parallelism (TP)** splits every layer across ``tp`` GPUs by attention head and by MLP column, the way
Megatron-LM does and vLLM's ``QKVParallelLinear`` / ``RowParallelLinear`` do
(https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/layers/linear.py): q/k/v and gate/up are
column-parallel (each GPU computes its own heads and its own slice of the MLP width, no communication), o_proj and
down are row-parallel (each GPU produces a *partial sum* of the full ``hidden`` vector), so each layer ends its
attention and its MLP with an **all-reduce** of ``tokens x hidden`` activations. When ``tp`` exceeds the model's KV
heads, a KV head cannot be split: vLLM gives every GPU one KV head and keeps ``tp / kv_heads`` copies of each
(``num_kv_head_replicas``; GPU ``r`` loads KV head ``r // num_kv_head_replicas``), so the cluster stores more KV
than one GPU would. The embedding and the LM head are split by vocabulary rows (vLLM's ``VocabParallelEmbedding``
and ``ParallelLMHead``); norms are kept whole on every GPU.

**The all-reduce** is timed with the ring model: each GPU sends and receives ``2 (p - 1) / p`` times the buffer
(a reduce-scatter then an all-gather), over a link of ``link_gbs`` GB/s in each direction: NCCL's tests derive
the best all-reduce time as ``t = (S / B) x 2 (n - 1) / n`` and all-to-all's factor as ``(n - 1) / n``
(https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md). Example links, in :data:`LINKS`:
fourth-generation NVLink on H100 SXM, 900 GB/s per GPU counting both directions, so 450 GB/s each way
(https://www.nvidia.com/en-us/data-center/h100/, read via
https://alpha-one-index.github.io/ai-infra-index/specs/networking-interconnects.html: 18 links x 50 GB/s); PCIe 5.0
x16, 64 GB/s each way (same page). Latency per message is left out, so small decode all-reduces come out faster
than they are.

**Pipeline parallelism (PP)** gives each of ``pp`` GPUs a run of consecutive layers; only one ``hidden`` vector per
token crosses each boundary (point to point). A batch split into ``m`` micro-batches leaves each stage idle for a
fraction ``(p - 1) / (m + p - 1)`` of the time: the fill and drain of GPipe's schedule (Huang et al. 2019,
https://arxiv.org/abs/1811.06965, summarised with that formula at https://yayajjiang.github.io/PaperTrace/papers/gpipe;
worked example p = 8, m = 32 gives 7/39 in
https://blog.rakeshraushan.org/ml/applied-ml/pipeline-parallelism.html). vLLM places the embedding on the first
stage and the LM head on the last (``get_pp_group().is_first_rank`` in
https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/models/llama.py).

**Expert parallelism (EP)** gives each of ``ep`` GPUs ``experts / ep`` whole experts of every MoE layer. Each
token's hidden vector is sent to the GPUs of its ``experts_per_token`` chosen experts (the *dispatch* all-to-all)
and the results come back (the *combine*); with routing spread evenly, ``(ep - 1) / ep`` of those copies leave
the GPU (the all-to-all's ``(n - 1) / n`` of NCCL's tests). Everything that is not a routed expert (attention,
shared experts, dense layers, embeddings) is kept whole on every GPU here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigError
from ._lookup import as_gpu, dtype_bytes, int_at_least
from .gpus import GPUSpec
from .models import MODEL_SHAPES, MOE_SHAPES, ModelShape
from .step_time import DEFAULT_EFFICIENCY, Efficiency, StepTime, step_time

LINKS: dict[str, float] = {
    "NVLink4-H100-SXM": 450.0,  # GB/s each way: 900 GB/s bidirectional per GPU (18 links x 50 GB/s)
    "PCIe5-x16": 64.0,  # GB/s each way: 128 GB/s bidirectional
}
"""GPU-to-GPU link bandwidth in GB/s **in one direction** (sources in the module docstring)."""


def _shape(model: ModelShape | str) -> ModelShape:
    if isinstance(model, ModelShape):
        return model
    for table in (MODEL_SHAPES, MOE_SHAPES):
        if isinstance(model, str) and model in table:
            return table[model]
    raise ConfigError(
        f"unknown model shape {model!r}; accepted: {sorted(set(MODEL_SHAPES) | set(MOE_SHAPES))} or a ModelShape"
    )


def _link(link_gbs: float | str) -> float:
    if isinstance(link_gbs, str):
        if link_gbs not in LINKS:
            raise ConfigError(f"unknown link {link_gbs!r}; accepted: {sorted(LINKS)} or GB/s as a number")
        return LINKS[link_gbs]
    number = isinstance(link_gbs, (int, float)) and not isinstance(link_gbs, bool)
    if not number or not math.isfinite(link_gbs) or link_gbs <= 0:
        raise ConfigError(f"link_gbs must be a finite number > 0 (GB/s each way) or a name in LINKS, got {link_gbs!r}")
    return float(link_gbs)


def _activation_bytes(dtype: str) -> int:
    """Activations travel in 16 bits (32 for fp32), whatever the weights are stored in (as in step_time)."""
    dtype_bytes(dtype)
    return 4 if dtype == "fp32" else 2


def ring_all_reduce_seconds(nbytes: float, ranks: int, link_gbs: float | str = "NVLink4-H100-SXM") -> float:
    """Seconds to all-reduce a buffer of ``nbytes`` over ``ranks`` GPUs in a ring: ``2 (p-1)/p x bytes / link``."""
    int_at_least("ranks", ranks)
    if not isinstance(nbytes, (int, float)) or isinstance(nbytes, bool) or not math.isfinite(nbytes) or nbytes < 0:
        raise ConfigError(f"nbytes must be a finite number >= 0, got {nbytes!r}")
    return 2 * (ranks - 1) / ranks * nbytes / (_link(link_gbs) * 1e9)


# ---------------------------------------------------------------- tensor parallelism


def _dense(s: ModelShape, what: str) -> tuple[int, int, int]:
    """hidden, intermediate, vocab of a dense grouped-query model, or a ConfigError naming what is missing."""
    if s.is_mla or s.is_moe or s.hidden is None or s.intermediate is None or s.vocab is None:
        raise ConfigError(
            f"{what} splits dense grouped-query models and needs hidden, intermediate and vocab; ModelShape "
            f"{s.name!r} has hidden={s.hidden!r}, intermediate={s.intermediate!r}, vocab={s.vocab!r}"
            + (", MLA attention" if s.is_mla else "")
            + (", experts (use expert_parallel_plan)" if s.is_moe else "")
        )
    return s.hidden, s.intermediate, s.vocab


def kv_split(q_heads: int, kv_heads: int, tp: int) -> tuple[int, int]:
    """(KV heads each GPU holds, copies of each KV head), vLLM's rule: split the KV heads when there are at least
    ``tp`` of them, else one per GPU and ``tp / kv_heads`` copies. ``tp`` must divide ``q_heads``, and divide or be
    a multiple of ``kv_heads``."""
    int_at_least("tp", tp)
    if q_heads % tp:
        raise ConfigError(f"tp={tp} does not divide q_heads={q_heads}: each GPU must hold whole query heads")
    if tp <= kv_heads:
        if kv_heads % tp:
            raise ConfigError(f"tp={tp} does not divide kv_heads={kv_heads}")
        return kv_heads // tp, 1
    if tp % kv_heads:
        raise ConfigError(f"tp={tp} is above kv_heads={kv_heads} but not a multiple of it: copies would be uneven")
    return 1, tp // kv_heads


@dataclass(frozen=True)
class TensorParallelPlan:
    """What one of ``tp`` GPUs holds and sends (every GPU the same). Bytes are per GPU."""

    model: str
    tp: int
    q_heads_per_rank: int
    kv_heads_per_rank: int
    kv_head_copies: int  # how many GPUs hold each KV head (1 = split, no copies)
    weight_bytes_per_rank: float
    kv_bytes_per_token_per_rank: float  # all layers
    layers: int
    hidden: int
    activation_bytes: int
    link_gbs: float
    rank_shape: ModelShape  # one GPU's share as a shape step_time can time
    all_reduces_per_layer: int = 2  # after attention's o_proj and after the MLP's down projection

    @property
    def all_reduce_bytes_per_token(self) -> int:
        """The buffer one all-reduce sums, per token: one ``hidden`` vector of partial sums."""
        return self.hidden * self.activation_bytes

    @property
    def all_reduce_bytes_per_token_per_layer(self) -> int:
        return self.all_reduces_per_layer * self.all_reduce_bytes_per_token

    def all_reduce_seconds(self, tokens: int) -> float:
        """Time of every all-reduce of one step of ``tokens`` tokens (all layers), ring model."""
        int_at_least("tokens", tokens)
        one = ring_all_reduce_seconds(tokens * self.all_reduce_bytes_per_token, self.tp, self.link_gbs)
        return self.layers * self.all_reduces_per_layer * one

    def sent_bytes_per_rank(self, tokens: int) -> float:
        """Bytes each GPU sends in one step (all layers): ``2 (p-1)/p`` of every buffer."""
        int_at_least("tokens", tokens)
        per_layer = tokens * self.all_reduce_bytes_per_token_per_layer
        return self.layers * 2 * (self.tp - 1) / self.tp * per_layer


def _rank_weight_params(s: ModelShape, tp: int, kv_per_rank: int, layers: int, first: bool, last: bool) -> float:
    """Weights one GPU of a TP group holds for ``layers`` layers (plus the embedding if ``first``, the LM head if
    ``last``): the sharded matrices / tp, each KV head it keeps whole, and the rest (norms, biases) replicated."""
    hidden, inter, vocab = _dense(s, "tensor parallelism")
    q, kv = s.q_heads * s.head_dim, s.kv_heads * s.head_dim
    per_layer = 2 * hidden * q + 2 * hidden * kv + 3 * hidden * inter
    table = vocab * hidden
    tables = table if s.tied_embeddings else 2 * table
    other = s.params - s.layers * per_layer - tables  # norms, biases: small, kept whole on each GPU
    rank_layer = (2 * hidden * q + 3 * hidden * inter) / tp + 2 * hidden * kv_per_rank * s.head_dim
    if s.tied_embeddings:
        rank_tables = table / tp if (first or last) else 0.0
    else:
        rank_tables = (table / tp if first else 0.0) + (table / tp if last else 0.0)
    return layers * rank_layer + rank_tables + other * layers / s.layers


def tensor_parallel_plan(
    model: ModelShape | str, tp: int, dtype: str = "bf16", link_gbs: float | str = "NVLink4-H100-SXM"
) -> TensorParallelPlan:
    """Split ``model`` over ``tp`` GPUs (module docstring). ``tp`` must divide the query heads and the MLP width."""
    s = _shape(model)
    hidden, inter, vocab = _dense(s, "tensor_parallel_plan")
    kv_per_rank, copies = kv_split(s.q_heads, s.kv_heads, tp)
    if inter % tp:
        raise ConfigError(f"tp={tp} does not divide {s.name}'s intermediate={inter}")
    size = dtype_bytes(dtype)
    params = _rank_weight_params(s, tp, kv_per_rank, s.layers, True, True)
    rank_shape = dataclasses.replace(
        s,
        name=f"{s.name} (1 of TP={tp})",
        q_heads=s.q_heads // tp,
        kv_heads=kv_per_rank,
        intermediate=inter // tp,
        vocab=math.ceil(vocab / tp),
        params=max(1, round(params)),
        active_params=max(1, round(params)),
    )
    return TensorParallelPlan(
        model=s.name,
        tp=tp,
        q_heads_per_rank=s.q_heads // tp,
        kv_heads_per_rank=kv_per_rank,
        kv_head_copies=copies,
        weight_bytes_per_rank=params * size,
        kv_bytes_per_token_per_rank=2 * s.layers * kv_per_rank * s.head_dim * size,
        layers=s.layers,
        hidden=hidden,
        activation_bytes=_activation_bytes(dtype),
        link_gbs=_link(link_gbs),
        rank_shape=rank_shape,
    )


@dataclass(frozen=True)
class TPStepTime:
    """One step under TP: one GPU's share of the work (a :class:`StepTime`) plus the all-reduces, not overlapped."""

    compute: StepTime
    all_reduce_s: float
    tp: int

    @property
    def seconds(self) -> float:
        return self.compute.seconds + self.all_reduce_s

    def __repr__(self) -> str:
        return (
            f"TPStepTime(TP={self.tp}: {self.seconds * 1e3:.3g} ms = compute {self.compute.seconds * 1e3:.3g} ms "
            f"+ all-reduce {self.all_reduce_s * 1e3:.3g} ms)"
        )


def tp_step_time(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    tp: int,
    decode_contexts: Iterable[int] = (),
    prefill_chunks: Iterable[tuple[int, int]] = (),
    dtype: str = "bf16",
    link_gbs: float | str = "NVLink4-H100-SXM",
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
) -> TPStepTime:
    """:func:`~.step_time.step_time` of one GPU's share (its heads, its MLP slice, its vocabulary rows) plus
    ``2 x layers`` ring all-reduces of ``tokens x hidden``. The LM head's final gather of logits is left out."""
    plan = tensor_parallel_plan(model, tp, dtype, link_gbs)
    decodes, chunks = list(decode_contexts), list(prefill_chunks)
    compute = step_time(plan.rank_shape, gpu, decodes, chunks, dtype, efficiency=efficiency)
    tokens = len(decodes) + sum(c[0] for c in chunks)
    return TPStepTime(compute, plan.all_reduce_seconds(tokens), tp)


# ---------------------------------------------------------------- pipeline parallelism


def pipeline_bubble(stages: int, microbatches: int) -> float:
    """Fraction of time each stage idles in a GPipe schedule: ``(p - 1) / (m + p - 1)``."""
    p, m = int_at_least("stages", stages), int_at_least("microbatches", microbatches)
    return (p - 1) / (m + p - 1)


def stage_layers(layers: int, pp: int) -> list[int]:
    """Layers per stage, as even as possible; the earlier stages take the remainder (this module's choice)."""
    int_at_least("pp", pp)
    if pp > layers:
        raise ConfigError(f"pp={pp} exceeds layers={layers}: a stage would hold no layer")
    base, extra = divmod(layers, pp)
    return [base + (1 if i < extra else 0) for i in range(pp)]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage on one GPU (or on each GPU of its TP group)."""

    index: int
    layers: int
    weight_bytes: float  # per GPU
    kv_bytes_per_token: float  # per GPU, this stage's layers only


def pipeline_plan(model: ModelShape | str, pp: int, tp: int = 1, dtype: str = "bf16") -> list[Stage]:
    """Per stage: its layers, and per GPU the weights (embedding on the first stage, LM head on the last) and KV
    per token. Between stages one ``hidden`` vector per token is sent, point to point."""
    s = _shape(model)
    kv_per_rank, _ = kv_split(s.q_heads, s.kv_heads, tp)
    tensor_parallel_plan(s, tp, dtype)  # the same refusals as TP alone
    size = dtype_bytes(dtype)
    counts = stage_layers(s.layers, pp)
    out = []
    for i, n in enumerate(counts):
        params = _rank_weight_params(s, tp, kv_per_rank, n, i == 0, i == pp - 1)
        out.append(Stage(i, n, params * size, 2 * n * kv_per_rank * s.head_dim * size))
    return out


@dataclass(frozen=True)
class MemoryPerGPU:
    """The fullest GPU of a ``tp x pp`` layout: its weights, the KV pool left, and tokens of KV that pool holds."""

    tp: int
    pp: int
    gpus: int
    weight_bytes: float
    kv_budget_bytes: float
    kv_bytes_per_token: float
    memory_bytes: float

    @property
    def fits(self) -> bool:
        return self.kv_budget_bytes > 0

    @property
    def max_kv_tokens(self) -> int:
        return int(self.kv_budget_bytes // self.kv_bytes_per_token)


def memory_per_gpu(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    tp: int = 1,
    pp: int = 1,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    memory_utilization: float = 0.9,
) -> MemoryPerGPU:
    """Weights and KV pool of the fullest GPU when ``model`` runs on ``tp x pp`` GPUs (``memory_utilization`` of
    each GPU is the engine's, as in :func:`~.memory.kv_budget_bytes`). Weights fall by about ``1 / (tp x pp)``."""
    g = as_gpu(gpu)
    number = isinstance(memory_utilization, (int, float)) and not isinstance(memory_utilization, bool)
    if not number or not 0 < memory_utilization <= 1:
        raise ConfigError(f"memory_utilization must be in (0, 1], got {memory_utilization!r}")
    stages = pipeline_plan(model, pp, tp, dtype)
    kv_scale = dtype_bytes(kv_dtype or dtype) / dtype_bytes(dtype)
    fullest = max(stages, key=lambda st: (st.weight_bytes, st.kv_bytes_per_token))
    per_token = max(st.kv_bytes_per_token for st in stages) * kv_scale
    budget = g.memory_bytes * memory_utilization - fullest.weight_bytes
    return MemoryPerGPU(tp, pp, tp * pp, fullest.weight_bytes, max(0.0, budget), per_token, g.memory_bytes)


# ---------------------------------------------------------------- expert parallelism


@dataclass(frozen=True)
class ExpertParallelPlan:
    """``ep`` GPUs sharing the routed experts; ``tokens`` tokens on each GPU per step. Bytes are per GPU."""

    model: str
    ep: int
    tokens: int
    experts_per_rank: int
    moe_layers: int
    dispatch_bytes_per_layer: float  # token copies this GPU sends to other GPUs' experts, one MoE layer
    combine_bytes_per_layer: float  # the expert outputs sent back, one MoE layer
    expert_weight_bytes_per_rank: float
    replicated_weight_bytes: float  # attention, shared experts, dense layers, embeddings: whole on every GPU
    link_gbs: float

    @property
    def weight_bytes_per_rank(self) -> float:
        return self.expert_weight_bytes_per_rank + self.replicated_weight_bytes

    @property
    def all_to_all_bytes_per_step(self) -> float:
        """Bytes this GPU sends in one step: dispatch and combine, every MoE layer."""
        return self.moe_layers * (self.dispatch_bytes_per_layer + self.combine_bytes_per_layer)

    @property
    def all_to_all_seconds(self) -> float:
        """Time to send :attr:`all_to_all_bytes_per_step` at ``link_gbs`` (each GPU sends in parallel)."""
        return self.all_to_all_bytes_per_step / (self.link_gbs * 1e9)


def expert_parallel_plan(
    model: ModelShape | str,
    ep: int,
    tokens: int,
    dtype: str = "bf16",
    link_gbs: float | str = "NVLink4-H100-SXM",
) -> ExpertParallelPlan:
    """Spread the routed experts of a mixture of experts over ``ep`` GPUs (module docstring).

    Dispatch per MoE layer, per GPU: ``tokens x experts_per_token x hidden x activation bytes x (ep-1)/ep`` (each
    token's copies go to its chosen experts; routing assumed even, so ``1/ep`` of them stay). Combine: the same."""
    s = _shape(model)
    if not s.is_moe or s.hidden is None:
        raise ConfigError(
            f"expert_parallel_plan needs a mixture of experts with hidden recorded; ModelShape {s.name!r} has "
            f"experts={s.experts!r}, hidden={s.hidden!r}"
        )
    int_at_least("ep", ep)
    int_at_least("tokens", tokens)
    if s.experts % ep:
        raise ConfigError(f"ep={ep} does not divide experts={s.experts} of {s.name}")
    size = dtype_bytes(dtype)
    copies = tokens * s.experts_per_token * s.hidden * _activation_bytes(dtype)
    leaving = copies * (ep - 1) / ep
    experts = s.routed_expert_params
    return ExpertParallelPlan(
        model=s.name,
        ep=ep,
        tokens=tokens,
        experts_per_rank=s.experts // ep,
        moe_layers=s.moe_layers,
        dispatch_bytes_per_layer=leaving,
        combine_bytes_per_layer=leaving,
        expert_weight_bytes_per_rank=experts / ep * size,
        replicated_weight_bytes=(s.params - experts) * size,
        link_gbs=_link(link_gbs),
    )
