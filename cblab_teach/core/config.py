"""Engine settings, validated once so a typo fails early with a clear message."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..errors import ConfigError

KV_LAYOUTS = ("dense", "paged")
ATTENTION_IMPLS = ("segmented", "ragged")
# Accepted values, compared by type as well as value: 1 == True and 0 == False, but EngineConfig(preemption=1)
# is a typo, not a mode. A new preemption mode joins this tuple.
PREEMPTION_MODES = (False, True, "recompute", "swap")


@dataclass(frozen=True)
class EngineConfig:
    max_tokens_per_step: int = 64  # the per-step token budget
    prefill_chunk_size: int = 32  # at most this many prompt tokens per request per step
    max_running: int = 256  # admission limit on requests holding KV
    kv_layout: str = "paged"
    block_size: int = 16
    num_blocks: int = 1024  # pool size: num_blocks * block_size slots (dense uses the same slots)
    policy: str = "fcfs"  # or "priority": smaller Request.priority first
    attention: str = "segmented"  # or "ragged": the full [N, M] mask, the definition
    kv_read: str = "block_table"  # or "flatten": copy each request's blocks first
    eos_token_id: int | None = None
    device: str = "cpu"
    preemption: bool | str = False  # True or "recompute": admit optimistically, preempt + recompute (paged);
    # "swap": preempt by copying the victim's K/V to a host pool and back (core/swap.py)
    num_host_blocks: int = 64  # capacity of the host (swap) pool, in blocks of block_size; used by "swap" only
    enable_prefix_caching: bool = False  # reuse full KV blocks of identical prefixes (paged)
    speculative: str | None = None  # None, "ngram" (prompt lookup) or "draft" (a smaller TinyLM)
    num_speculative_tokens: int = 4
    ngram_size: int = 2
    keep_records: int | None = None  # None: every StepRecord stays in engine.records; K: only the last K (a server)

    def __post_init__(self) -> None:
        for name in (
            "max_tokens_per_step",
            "prefill_chunk_size",
            "max_running",
            "block_size",
            "num_blocks",
            "num_host_blocks",
            "num_speculative_tokens",
            "ngram_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"EngineConfig.{name} must be an int >= 1, got {value!r}")
        choices = {
            "kv_layout": KV_LAYOUTS,
            "attention": ATTENTION_IMPLS,
            "kv_read": ("block_table", "flatten"),
            "policy": ("fcfs", "priority"),
            "speculative": (None, "ngram", "draft"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"EngineConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, allowed in (("preemption", PREEMPTION_MODES), ("enable_prefix_caching", (False, True))):
            value = getattr(self, name)
            if not any(type(value) is type(a) and value == a for a in allowed):
                raise ConfigError(f"EngineConfig.{name} must be one of {allowed}, got {value!r}")
        if self.eos_token_id is not None:
            check_token_id(self.eos_token_id, "EngineConfig.eos_token_id")
        keep = self.keep_records
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            raise ConfigError(f"EngineConfig.keep_records must be None or an int >= 1, got {keep!r}")
        for name in ("preemption", "enable_prefix_caching"):
            if getattr(self, name) and self.kv_layout != "paged":
                raise ConfigError(
                    f"EngineConfig.{name}={getattr(self, name)!r} needs kv_layout='paged', got {self.kv_layout!r}"
                )

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size


def check_token_id(value, what: str, error: type[Exception] = ConfigError) -> int:
    """An end-of-sequence id is an int >= 0 (not a bool): the same rule for the engine's default and a request's."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise error(f"{what} must be None or a token id >= 0, got {value!r}")
    return int(value)
