"""Shapes of real models, copied from each model's public ``config.json``, with the link beside the numbers.

Only what the memory, roofline and step-time arithmetic needs: layers, query heads, KV heads, head size,
parameters, and (for the step-time model's per-operator split) hidden size, MLP width and vocabulary.
Parameter counts of the dense models are computed from the same config (embeddings, attention and MLP
projections, norms); each agrees with the size the model card states (8.03B, 70.6B, 7.62B, 7.25B, 9.24B).
Mixtures of experts also record their experts (how many, how many per token, one expert's width), which expert
parallelism divides among GPUs; Mixtral's count, computed the same way, is 46.7B (12.9B active per token).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

HF = "https://huggingface.co"


def _is_int(value: object) -> bool:
    """A real int: ``True`` and ``128.0`` are typos in a shape, not a count."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelShape:
    """What serving a model costs in memory: its weights and, per token, its KV cache."""

    name: str
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    params: int  # every weight (for a mixture of experts: all experts)
    active_params: int  # weights one token multiplies with (== params for dense models)
    source: str  # the config.json the numbers were checked against
    checked_via: str = ""  # where that file's text was read, when not at the source itself
    kv_latent_dim: int | None = None  # MLA: kv_lora_rank + qk_rope_head_dim, cached instead of K and V
    v_head_dim: int | None = None  # MLA: the value width attention multiplies with (kv_lora_rank when absorbed)
    sliding_window: int | None = None
    sliding_layers: int = 0  # how many layers attend only to the last ``sliding_window`` tokens
    note: str = ""
    hidden: int | None = None  # model width; None where not recorded (the embedding is then not split out)
    intermediate: int | None = None  # MLP width of a dense model
    vocab: int | None = None
    tied_embeddings: bool = False  # the LM head reuses the embedding table (Gemma-2)
    # mixture of experts (None for a dense model): routed experts per MoE layer, how many each token is sent to,
    # the MLP width of one expert, always-on shared experts, and leading layers that keep a dense MLP instead
    experts: int | None = None
    experts_per_token: int | None = None
    expert_intermediate: int | None = None
    shared_experts: int = 0
    dense_layers: int = 0

    def __post_init__(self) -> None:
        """Refuse, naming the field, a shape the arithmetic would divide by zero on or turn into negative bytes."""
        where = f"ModelShape {self.name!r}"
        for name in ("layers", "q_heads", "kv_heads", "head_dim", "params", "active_params"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{where}: {name} must be an int >= 1, got {value!r}")
        for name in ("kv_latent_dim", "v_head_dim", "sliding_window", "hidden", "intermediate", "vocab"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{where}: {name} must be None or an int >= 1, got {value!r}")
        if not isinstance(self.tied_embeddings, bool):
            raise ConfigError(f"{where}: tied_embeddings must be True or False, got {self.tied_embeddings!r}")
        if not _is_int(self.sliding_layers) or not 0 <= self.sliding_layers <= self.layers:
            raise ConfigError(
                f"{where}: sliding_layers must be an int in [0, layers={self.layers}], got {self.sliding_layers!r}"
            )
        if self.sliding_layers and self.sliding_window is None:
            raise ConfigError(f"{where}: sliding_layers={self.sliding_layers} needs a sliding_window, got None")
        if self.q_heads % self.kv_heads:
            raise ConfigError(f"{where}: q_heads={self.q_heads} is not a multiple of kv_heads={self.kv_heads}")
        if self.active_params > self.params:
            raise ConfigError(f"{where}: active_params={self.active_params} exceeds params={self.params}")
        self._check_experts(where)
        if (self.kv_latent_dim is None) != (self.v_head_dim is None):  # the roofline reads both for MLA
            raise ConfigError(
                f"{where}: MLA needs kv_latent_dim and v_head_dim together, got {self.kv_latent_dim!r} "
                f"and {self.v_head_dim!r}"
            )

    def _check_experts(self, where: str) -> None:
        """A mixture of experts needs its three numbers together, and a token cannot pick more experts than exist."""
        moe = (self.experts, self.experts_per_token, self.expert_intermediate)
        for name, value in zip(("experts", "experts_per_token", "expert_intermediate"), moe):
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{where}: {name} must be None or an int >= 1, got {value!r}")
        if any(v is None for v in moe) and any(v is not None for v in moe):
            raise ConfigError(
                f"{where}: a mixture of experts needs experts, experts_per_token and expert_intermediate together, "
                f"got {self.experts!r}, {self.experts_per_token!r} and {self.expert_intermediate!r}"
            )
        if self.experts is not None and self.experts_per_token > self.experts:
            raise ConfigError(f"{where}: experts_per_token={self.experts_per_token} exceeds experts={self.experts}")
        if not _is_int(self.shared_experts) or self.shared_experts < 0:
            raise ConfigError(f"{where}: shared_experts must be an int >= 0, got {self.shared_experts!r}")
        if not _is_int(self.dense_layers) or not 0 <= self.dense_layers < self.layers:
            raise ConfigError(
                f"{where}: dense_layers must be an int in [0, layers={self.layers}), got {self.dense_layers!r}"
            )
        if self.experts is None and (self.shared_experts or self.dense_layers):
            raise ConfigError(
                f"{where}: shared_experts={self.shared_experts} and dense_layers={self.dense_layers} describe a "
                f"mixture of experts, but experts is None"
            )

    @property
    def is_moe(self) -> bool:
        return self.experts is not None

    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is a set of experts (0 for a dense model)."""
        return self.layers - self.dense_layers if self.is_moe else 0

    @property
    def routed_expert_params(self) -> int:
        """Weights of every routed expert of every MoE layer (gate, up and down of each): what expert
        parallelism divides among GPUs; 0 for a dense model or where ``hidden`` is not recorded."""
        if not self.is_moe or self.hidden is None:
            return 0
        return self.moe_layers * self.experts * 3 * self.hidden * self.expert_intermediate

    @property
    def is_mla(self) -> bool:
        return self.kv_latent_dim is not None

    @property
    def gqa_group(self) -> int:
        """Query heads per KV head (1 = plain multi-head attention)."""
        return self.q_heads // self.kv_heads

    @property
    def lookup_params(self) -> int:
        """Weights a step only looks rows up in, never multiplies: an untied embedding table (0 if tied or unknown)."""
        if self.hidden is None or self.vocab is None or self.tied_embeddings:
            return 0
        return self.vocab * self.hidden

    @property
    def matmul_params(self) -> int:
        """Active weights every token is multiplied with: all active ones but the embedding table (a lookup)."""
        return self.active_params - self.lookup_params


MODEL_SHAPES: dict[str, ModelShape] = {
    "Llama-3.1-8B": ModelShape(
        "Llama-3.1-8B", layers=32, q_heads=32, kv_heads=8, head_dim=128,
        params=8_030_261_248, active_params=8_030_261_248,
        hidden=4096, intermediate=14336, vocab=128256,
        source=f"{HF}/meta-llama/Llama-3.1-8B/blob/main/config.json",
        checked_via=f"{HF}/NbAiLab/nb-llama-3.1-8B/blob/main/config.json (a copy naming meta-llama/Llama-3.1-8B)",
        note="hidden 4096, intermediate 14336, vocab 128256, untied embeddings",
    ),
    "Llama-3.1-70B": ModelShape(
        "Llama-3.1-70B", layers=80, q_heads=64, kv_heads=8, head_dim=128,
        params=70_553_706_496, active_params=70_553_706_496,
        hidden=8192, intermediate=28672, vocab=128256,
        source=f"{HF}/meta-llama/Llama-3.1-70B/blob/main/config.json",
        checked_via=f"{HF}/mattshumer/Reflection-70B-Draft/blob/refs%2Fpr%2F1/config.json (names Llama-3.1-70B-Instruct)",
        note="hidden 8192, intermediate 28672, vocab 128256, untied embeddings",
    ),
    "Qwen2.5-7B": ModelShape(
        "Qwen2.5-7B", layers=28, q_heads=28, kv_heads=4, head_dim=128,
        params=7_615_616_512, active_params=7_615_616_512,
        hidden=3584, intermediate=18944, vocab=152064,
        source=f"{HF}/Qwen/Qwen2.5-7B/blob/main/config.json",
        checked_via=f"{HF}/fblgit/cybertron-v4-qw7B-MGS/blob/main/config.json (names Qwen/Qwen2.5-7B)",
        note="hidden 3584, intermediate 18944, vocab 152064, q/k/v biases, untied embeddings",
    ),
    "Mistral-7B-v0.3": ModelShape(
        "Mistral-7B-v0.3", layers=32, q_heads=32, kv_heads=8, head_dim=128,
        params=7_248_023_552, active_params=7_248_023_552,
        hidden=4096, intermediate=14336, vocab=32768,
        source=f"{HF}/mistralai/Mistral-7B-v0.3/blob/main/config.json",
        checked_via=f"{HF}/mistralai/Mistral-7B-Instruct-v0.3/blob/c170c708c41dac9275d15a8fff4eca08d52bab71/config.json",
        note="hidden 4096, intermediate 14336, vocab 32768, sliding_window null (full attention)",
    ),
    "Gemma-2-9B": ModelShape(
        "Gemma-2-9B", layers=42, q_heads=16, kv_heads=8, head_dim=256,
        params=9_241_705_984, active_params=9_241_705_984,
        hidden=3584, intermediate=14336, vocab=256000, tied_embeddings=True,
        source=f"{HF}/google/gemma-2-9b/blob/main/config.json",
        checked_via=f"{HF}/ashercn97/blanked-v011/blob/main/config.json (names google/gemma-2-9b)",
        sliding_window=4096, sliding_layers=21,
        note="head_dim 256 (not hidden/heads = 224); local (4096-token window) and global layers alternate; "
        "hidden 3584, intermediate 14336, vocab 256000, tied embeddings",
    ),
    "DeepSeek-V3": ModelShape(
        "DeepSeek-V3", layers=61, q_heads=128, kv_heads=1, head_dim=192,
        params=671_000_000_000, active_params=37_000_000_000,
        source=f"{HF}/deepseek-ai/DeepSeek-V3/blob/main/config.json",
        checked_via="https://huggingface.co/amd/DeepSeek-R1-0528-MXFP4/blob/main/config.json (same architecture) and "
        "https://github.com/deepseek-ai/DeepSeek-V3 README (671B total, 37B activated)",
        kv_latent_dim=512 + 64, v_head_dim=512,
        hidden=7168, experts=256, experts_per_token=8, expert_intermediate=2048, shared_experts=1, dense_layers=3,
        note="hidden 7168; n_routed_experts 256, num_experts_per_tok 8, moe_intermediate_size 2048, "
        "n_shared_experts 1, first_k_dense_replace 3 (also https://huggingface.co/XelotX/DeepSeek-V3-Base-Original/"
        "blob/main/inference/configs/config_671B.json, a duplicate of deepseek-ai/DeepSeek-V3-Base: dim 7168, "
        "moe_inter_dim 2048, n_dense_layers 3); "
        "MLA: kv_lora_rank 512 + qk_rope_head_dim 64 cached per layer per token, shared by all 128 heads; "
        "query/key head 192 = 128 + 64; MoE 256 routed experts, 8 per token; params exclude the 14B MTP module",
    ),
}

MIXTRAL_8X7B = ModelShape(
    "Mixtral-8x7B-v0.1", layers=32, q_heads=32, kv_heads=8, head_dim=128,
    params=46_702_792_704, active_params=12_879_925_248,
    hidden=4096, vocab=32000, experts=8, experts_per_token=2, expert_intermediate=14336,
    source=f"{HF}/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json",
    checked_via=f"{HF}/mistralai/Mixtral-8x7B-Instruct-v0.1/blob/eba92302a2861cdc0098cc54bc9f17cb2c47eb61/config.json "
    f"and {HF}/YeungNLP/firefly-mixtral-8x7b/blob/f334c672409846213e600e580af3fac89a9c2e64/config.json (names "
    "mistralai/Mixtral-8x7B-v0.1); https://arxiv.org/abs/2401.04088 (47B parameters, 13B active)",
    note="num_local_experts 8, num_experts_per_tok 2, intermediate_size 14336 is one expert's width; hidden 4096, "
    "vocab 32000, untied embeddings, sliding_window null. Parameters computed from the config: "
    "32 x (attention 41,943,040 + 8 experts x 176,160,768 + router 32,768 + norms 8,192) + 2 x 32000 x 4096 + 4096; "
    "active: 2 experts instead of 8",
)
"""Mixtral-8x7B, a mixture of experts without MLA, for the expert-parallel arithmetic. Kept out of
:data:`MODEL_SHAPES` (whose every entry the dense tests rebuild from its widths); look it up by name through
:data:`MOE_SHAPES`."""

MOE_SHAPES: dict[str, ModelShape] = {
    "Mixtral-8x7B-v0.1": MIXTRAL_8X7B,
    "DeepSeek-V3": MODEL_SHAPES["DeepSeek-V3"],
}
