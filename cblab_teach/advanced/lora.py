"""Many LoRA adapters in one batch: the base projection for every row, plus each row's low-rank delta.

LoRA fine-tunes a projection ``W`` (``[out, in]``) with a low-rank update::

    W' = W + s * B @ A        A: [r, in],  B: [out, r],  s = alpha / r

(``s = lora_alpha / rank`` is the scaling Hugging Face PEFT and vLLM's ``LoRALayerWeights`` use.)

Merging each adapter into its own copy of the model costs a whole model per adapter and
keeps requests of different adapters out of each other's batches. S-LoRA (Sheng et al.
2023, "S-LoRA: Serving Thousands of Concurrent LoRA Adapters", arXiv:2311.03285) and
Punica (Chen et al. 2023, "Punica: Multi-Tenant LoRA Serving", arXiv:2310.18547) keep one
base model and split each projection in two::

    y = x @ W.T                                         every row of the batch, one matmul
    y[rows of a] += s_a * (x[rows of a] @ A_a.T) @ B_a.T  for each adapter a in the batch

Punica's SGMV kernel and S-LoRA's batched kernels run the second line for all adapters in
one launch; here it is a loop over the adapters present in the step (a gather, two thin
matmuls, a scatter-add), the same math in readable form. Rows without an adapter get the
base projection only.

Why it is exact: ``x @ (W + s B A).T = x @ W.T + s (x @ A.T) @ B.T``. The two sides differ
only by rounding, so in float64 a request's greedy tokens equal those of the model with its
adapter merged in (:meth:`LoRAAdapter.merged_into`), which is what the tests check.

How it plugs in: :func:`install` swaps each targeted ``nn.Linear`` of :class:`TinyLM` for a
:class:`LoRALinear` holding the very same weight (state-dict keys unchanged). The engine
tells it which row uses which adapter through a slot it fills for its own forward only,
as it does with ``model.attention_hook``, so a model shared by several engines stays the
plain base model for the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import AdapterError, ConfigError, DuplicateAdapterError
from ..model.config import ModelConfig
from ..model.tiny_lm import TinyLM

if TYPE_CHECKING:
    from ..core.batch_builder import RaggedBatch
    from ..core.engine import Engine
    from ..core.request import Request

# projection name -> the sub-module of a Block that owns it (cblab_teach/model/tiny_lm.py)
PROJECTIONS: dict[str, str] = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def projection(model: TinyLM, layer: int, name: str) -> nn.Linear:
    """The ``nn.Linear`` called ``name`` in block ``layer``."""
    return getattr(getattr(model.layers[layer], PROJECTIONS[name]), name)


def projection_shape(config: ModelConfig, name: str) -> tuple[int, int]:
    """``(out_features, in_features)`` of a projection, from the model's config alone."""
    q, kv = config.num_heads * config.head_dim, config.kv_heads * config.head_dim
    hidden, inter = config.hidden_size, config.intermediate_size
    return {
        "q_proj": (q, hidden),
        "k_proj": (kv, hidden),
        "v_proj": (kv, hidden),
        "o_proj": (hidden, q),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }[name]


@dataclass(frozen=True)
class LoRAAdapter:
    """A LoRA adapter: for each target projection, one ``A [rank, in]`` and ``B [out, rank]`` per layer."""

    rank: int
    alpha: float
    A: dict[str, list[torch.Tensor]]
    B: dict[str, list[torch.Tensor]]

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise AdapterError(f"LoRA rank must be an int >= 1, got {self.rank!r}")
        alpha_ok = isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
        if not alpha_ok or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise AdapterError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        if not isinstance(self.A, dict) or not isinstance(self.B, dict) or not self.A:
            raise AdapterError("LoRA A and B must be non-empty dicts: projection name -> one tensor per layer")
        if set(self.A) != set(self.B):
            raise AdapterError(f"A targets {sorted(self.A)} but B targets {sorted(self.B)}; they must match")
        unknown = sorted(set(self.A) - set(PROJECTIONS))
        if unknown:
            raise AdapterError(f"unknown target projections {unknown}; choose from {list(PROJECTIONS)}")
        layers = {len(self.A[n]) for n in self.A} | {len(self.B[n]) for n in self.B}
        if len(layers) != 1 or 0 in layers:
            raise AdapterError(f"every target needs the same number (>= 1) of per-layer matrices, got {sorted(layers)}")
        for name in self.A:
            for layer, (a, b) in enumerate(zip(self.A[name], self.B[name])):
                self._check_pair(name, layer, a, b)

    def _check_pair(self, name: str, layer: int, a, b) -> None:
        where = f"{name} layer {layer}"
        for label, t in (("A", a), ("B", b)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise AdapterError(f"{where}: {label} must be a 2-D floating tensor, got {got}")
            bad = (~torch.isfinite(t)).nonzero()  # a NaN or inf would spread to every token of the row
            if len(bad):
                i, j = bad[0].tolist()
                raise AdapterError(f"{where}: {label}[{i}, {j}] is {t[i, j].item()}; LoRA weights must be finite")
        if a.shape[0] != self.rank or b.shape[1] != self.rank:
            raise AdapterError(
                f"{where}: rank mismatch: A is {list(a.shape)} and B is {list(b.shape)}, "
                f"expected A [{self.rank}, in] and B [out, {self.rank}]"
            )

    # -- what it is --------------------------------------------------------------------------------
    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.A)

    @property
    def num_layers(self) -> int:
        return len(next(iter(self.A.values())))

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for d in (self.A, self.B) for ts in d.values() for t in ts)

    def delta(self, name: str, layer: int) -> torch.Tensor:
        """The dense update ``s * B @ A`` ``[out, in]`` of one projection (what merging adds)."""
        return self.scaling * self.B[name][layer] @ self.A[name][layer]

    # -- against a model -----------------------------------------------------------------------------
    def check_fits(self, model: TinyLM) -> None:
        """An :class:`AdapterError` naming the first layer count or shape that does not match ``model``."""
        if not isinstance(model, TinyLM):
            raise AdapterError(f"a LoRA adapter applies to a TinyLM, got {model!r}")
        cfg = model.config
        if self.num_layers != cfg.num_layers:
            raise AdapterError(f"adapter has {self.num_layers} layers but the model has {cfg.num_layers}")
        for name in self.targets:
            out_f, in_f = projection_shape(cfg, name)
            for layer, (a, b) in enumerate(zip(self.A[name], self.B[name])):
                if a.shape[1] != in_f or b.shape[0] != out_f:
                    raise AdapterError(
                        f"{name} layer {layer}: A {list(a.shape)} and B {list(b.shape)} do not fit the model's "
                        f"{name} [{out_f}, {in_f}]: need A [{self.rank}, {in_f}] and B [{out_f}, {self.rank}]"
                    )

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> LoRAAdapter:
        """A copy with every matrix in ``dtype`` on ``device``."""

        def move(d: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
            return {n: [t.detach().to(device=device, dtype=dtype).clone() for t in ts] for n, ts in d.items()}

        return LoRAAdapter(self.rank, self.alpha, move(self.A), move(self.B))

    def attach(self, engine: Engine, name: str) -> None:
        """What ``engine.add_adapter(name, self)`` calls: serve requests that name this adapter."""
        register_adapter(engine, name, self)

    def merged_into(self, model: TinyLM) -> TinyLM:
        """A new plain :class:`TinyLM` with ``W + s * B @ A`` in every targeted projection (``model`` is unchanged)."""
        self.check_fits(model)
        merged = TinyLM(model.config).to(model.device)
        merged.load_state_dict(model.state_dict())
        with torch.no_grad():
            for name in self.targets:
                for layer in range(self.num_layers):
                    weight = projection(merged, layer, name).weight
                    weight += self.delta(name, layer).to(device=weight.device, dtype=weight.dtype)
        return merged.eval()

    # -- for demos and tests ---------------------------------------------------------------------------
    @classmethod
    def random(
        cls,
        model: TinyLM | ModelConfig,
        rank: int = 4,
        targets: Sequence[str] = ("q_proj", "v_proj"),
        alpha: float | None = None,
        seed: int = 0,
        std: float = 0.1,
    ) -> LoRAAdapter:
        """A seeded adapter shaped for ``model`` (a trained adapter stand-in: A and B both random, so it
        changes the outputs; training would start from B = 0). ``alpha`` defaults to ``rank`` (scaling 1)."""
        cfg = model.config if isinstance(model, TinyLM) else model
        if not isinstance(cfg, ModelConfig):
            raise AdapterError(f"LoRAAdapter.random needs a TinyLM or a ModelConfig, got {model!r}")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise AdapterError(f"LoRA rank must be an int >= 1, got {rank!r}")
        targets = tuple(targets)
        unknown = sorted(set(targets) - set(PROJECTIONS))
        if not targets or unknown:
            raise AdapterError(
                f"unknown target projections {unknown or list(targets)}; choose from {list(PROJECTIONS)}"
            )
        if alpha is not None and (not isinstance(alpha, (int, float)) or isinstance(alpha, bool)):
            raise AdapterError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")  # float("2") would pass
        std_ok = isinstance(std, (int, float)) and not isinstance(std, bool) and math.isfinite(std)
        if not std_ok or std < 0:
            raise AdapterError(f"LoRAAdapter.random: std must be a finite number >= 0, got {std!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not -(2**63) <= seed < 2**64:  # torch's range
            raise AdapterError(f"LoRAAdapter.random: seed must be an int in [-2**63, 2**64), got {seed!r}")
        g = torch.Generator().manual_seed(seed)
        A: dict[str, list[torch.Tensor]] = {}
        B: dict[str, list[torch.Tensor]] = {}
        for name in targets:
            out_f, in_f = projection_shape(cfg, name)
            A[name] = [(torch.randn(rank, in_f, generator=g) * std).to(cfg.dtype) for _ in range(cfg.num_layers)]
            B[name] = [(torch.randn(out_f, rank, generator=g) * std).to(cfg.dtype) for _ in range(cfg.num_layers)]
        return cls(rank, float(rank if alpha is None else alpha), A, B)


# -- the batched forward -----------------------------------------------------------------------------------
class StepAdapters:
    """One step's routing: for each adapter present, the batch rows that use it (gathered once per step)."""

    def __init__(self, groups: list[tuple[str, torch.Tensor, LoRAAdapter]]) -> None:
        self.groups = groups

    def add_deltas(self, y: torch.Tensor, x: torch.Tensor, layer: int, name: str) -> torch.Tensor:
        """``y[rows] += s * (x[rows] @ A.T) @ B.T`` for each adapter group that targets this projection."""
        for _, rows, adapter in self.groups:
            if name not in adapter.A:
                continue
            xs = x.index_select(0, rows)
            delta = (xs @ adapter.A[name][layer].T) @ adapter.B[name][layer].T
            y.index_add_(0, rows, delta, alpha=adapter.scaling)
        return y


class _Slot:
    """Where the engine running a forward leaves its :class:`StepAdapters` (None outside its forward)."""

    active: StepAdapters | None = None


class LoRALinear(nn.Linear):
    """A model's projection with the same weight, plus the current step's per-row low-rank deltas."""

    def __init__(self, base: nn.Linear, layer: int, name: str, slot: _Slot) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter: nothing copied, state-dict keys unchanged
        self.register_parameter("bias", base.bias)
        self.layer, self.name = layer, name
        self._slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        step = self._slot.active
        return y if step is None else step.add_deltas(y, x, self.layer, self.name)


def install(model: TinyLM) -> _Slot:
    """Wrap every projection of ``model`` in a :class:`LoRALinear` (once); returns the slot they read."""
    slot = getattr(model, "_lora_slot", None)
    if slot is None:
        slot = _Slot()
        for layer in range(model.config.num_layers):
            for name, owner in PROJECTIONS.items():
                parent = getattr(model.layers[layer], owner)
                setattr(parent, name, LoRALinear(getattr(parent, name), layer, name, slot))
        model._lora_slot = slot
    return slot


class AdapterRouter:
    """The engine's forward hook: before its forward, say which rows use which adapter; after it, clear the slot."""

    def __init__(self, engine: Engine) -> None:
        self.adapters = engine.adapters  # the engine's own dict: adapters added later are seen too
        self.slot = install(engine.model)

    def groups(self, batch: RaggedBatch, requests: dict[int, Request]) -> list[tuple[str, torch.Tensor, LoRAAdapter]]:
        """``[(adapter name, batch rows, adapter)]`` for every adapter used by a request in the batch."""
        names = [requests[rid].adapter for rid in batch.request_ids]
        out = []
        for name in sorted({n for n in names if n is not None}):
            seqs = torch.tensor([i for i, n in enumerate(names) if n == name], device=batch.seq_ids.device)
            rows = torch.nonzero(torch.isin(batch.seq_ids, seqs)).flatten()
            out.append((name, rows, self.adapters[name]))
        return out

    def begin(self, batch: RaggedBatch, requests: dict[int, Request]) -> None:
        groups = self.groups(batch, requests)
        self.slot.active = StepAdapters(groups) if groups else None

    def end(self) -> None:
        self.slot.active = None


def router_of(engine: Engine) -> AdapterRouter | None:
    """The engine's adapter router, once an adapter has been added."""
    return next((h for h in engine.forward_hooks if isinstance(h, AdapterRouter)), None)


def register_adapter(engine: Engine, name: str, adapter: LoRAAdapter) -> None:
    """What :meth:`Engine.add_adapter` does: check the adapter against the model, keep a copy in its dtype."""
    if not isinstance(name, str) or not name:
        raise AdapterError(f"an adapter name must be a non-empty str, got {name!r}")
    if name in engine.adapters:
        raise DuplicateAdapterError(f"adapter name {name!r} is already registered with this engine")
    if not isinstance(adapter, LoRAAdapter):
        raise AdapterError(f"add_adapter({name!r}, ...) needs a LoRAAdapter, got {adapter!r}")
    if engine.config.enable_prefix_caching:
        raise ConfigError(
            f"adapter {name!r}: LoRA requests cannot share cached prefix blocks keyed by tokens alone (their K/V "
            "differ per adapter; vLLM adds the LoRA id to the block hash); use enable_prefix_caching=False"
        )
    adapter.check_fits(engine.model)
    engine.adapters[name] = adapter.to(engine.model.dtype, engine.model.device)
    if router_of(engine) is None:
        engine.forward_hooks.append(AdapterRouter(engine))
