"""The runs the capstone check puts an engine through, and the Hugging Face reference outputs."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import torch

from ...core.config import EngineConfig
from ...errors import CBLabError

VOCAB = 61


@dataclass(frozen=True)
class Join:
    """Request ``prompt`` (``max_new_tokens`` new) is added before engine step ``at_step``."""

    at_step: int
    prompt: tuple[int, ...]
    max_new_tokens: int


@dataclass(frozen=True)
class Scenario:
    layout: str
    budget: int
    chunk: int
    joins: tuple[Join, ...]
    block_size: int = 4
    num_blocks: int = 64

    def config(self) -> EngineConfig:
        return EngineConfig(
            max_tokens_per_step=self.budget,
            prefill_chunk_size=self.chunk,
            kv_layout=self.layout,
            block_size=self.block_size,
            num_blocks=self.num_blocks,
        )

    def joins_in_order(self) -> list[Join]:
        """Joins in the order the check adds them (by step, stable)."""
        return sorted(self.joins, key=lambda j: j.at_step)

    def describe(self) -> str:
        joins = ", ".join(f"step {j.at_step}: {len(j.prompt)}+{j.max_new_tokens}" for j in self.joins)
        return (
            f"{self.layout} KV (block_size={self.block_size}, num_blocks={self.num_blocks}), "
            f"budget={self.budget}, chunk={self.chunk}; requests (prompt+new) added at {joins}"
        )


def _prompt(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple(rng.randrange(1, VOCAB) for _ in range(n))


def fixed_scenarios() -> dict[str, Scenario]:
    rng = random.Random(2024)
    four = tuple(Join(0, _prompt(rng, n), m) for n, m in ((5, 4), (9, 3), (2, 5), (7, 4)))
    late = (
        Join(0, _prompt(rng, 6), 5),
        Join(0, _prompt(rng, 3), 6),
        Join(3, _prompt(rng, 8), 3),
        Join(7, _prompt(rng, 4), 4),
    )
    tight = tuple(Join(0, _prompt(rng, n), 4) for n in (6, 5, 7, 4))
    return {
        "paged, budget 16, chunk 8": Scenario("paged", 16, 8, four),
        "dense, budget 8, chunk 4": Scenario("dense", 8, 4, four),
        "paged, budget 3, chunk 1 (one prompt token per step)": Scenario("paged", 3, 1, four, block_size=2),
        "paged, requests join mid-run": Scenario("paged", 5, 2, late, block_size=2),
        "dense, budget 1 (one token per step)": Scenario("dense", 1, 1, late[:2]),
        "paged, tight pool (blocks must come back)": Scenario("paged", 6, 3, tight, block_size=2, num_blocks=12),
    }


def random_scenario(rng: random.Random) -> Scenario:
    joins = tuple(
        Join(rng.choice([0, 0, rng.randint(1, 8)]), _prompt(rng, rng.randint(1, 10)), rng.randint(1, 5))
        for _ in range(rng.randint(2, 4))
    )
    return Scenario(
        rng.choice(["dense", "paged"]), rng.randint(2, 12), rng.randint(1, 6), joins, block_size=rng.choice([1, 2, 4])
    )


@functools.lru_cache(maxsize=1)
def hf_model():
    """A random tiny Llama from a config (seeded, float64): the independent reference."""
    try:
        import transformers
    except ImportError as e:  # a test dependency; the course's `make install` has it
        raise CBLabError("the capstone check compares with Hugging Face: pip install transformers") from e
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(torch.float64).eval()


def fresh_model():
    """A new TinyLM with the Hugging Face weights for every run: an engine may leave hooks on its model."""
    from ...model.tiny_lm import TinyLM

    return TinyLM.from_hf(hf_model())


@functools.lru_cache(maxsize=256)
def hf_output(prompt: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    """Greedy ``generate`` of one prompt alone, with an explicit attention mask."""
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        out = hf_model().generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return tuple(out[0, len(prompt) :].tolist())


@dataclass
class StepSeen:
    """One engine step as the check saw it: the plan, and every forward's batch (there must be one)."""

    plan: object
    batches: list = field(default_factory=list)
