"""What the load generator asks: prompts with their ``max_tokens``, sampled the way ``vllm bench serve`` samples.

Lengths follow vLLM's random dataset (``vllm/benchmarks/datasets``): each request draws its input and output
length uniformly from ``[floor(L * (1 - r)), ceil(L * (1 + r))]`` for a range ratio ``r`` in ``[0, 1)``, output
at least 1. vLLM draws random token ids with the model's tokenizer; a load generator for *any* server has no
tokenizer, so a random prompt here is ``input_len`` common English words (about one token each for a BPE
tokenizer like SmolLM2's; the course's character model spends one token per character). What the server really
counted comes back in its ``usage``, and the report uses that, never this estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WORDS = (
    "the of and to in is it that for on with as was at by this be from are or an have not they which one you "
    "were all we when there can more if no out so what time up other about into than them some could then two "
    "first been like over only new how most after also made many before must through back years where much way"
).split()

CHAT_QUESTIONS = (
    "What is continuous batching, in one paragraph?",
    "Why does a language model generate one token at a time?",
    "Explain the KV cache to a new engineer.",
    "What is the difference between prefill and decode?",
    "Give three tips for writing clear Python code.",
    "What does time to first token measure?",
    "Why do GPUs like large batches?",
    "Summarize how a hash table works.",
    "What is a good name for a pet turtle?",
    "How does paged attention save memory?",
    "Write a haiku about waiting in a queue.",
    "What is the capital of France, and why is it famous?",
    "Explain Poisson arrivals with an everyday example.",
    "What is the difference between latency and throughput?",
    "How would you explain recursion to a child?",
    "List four planets of the solar system.",
)


@dataclass(frozen=True)
class PromptSpec:
    """One request to send: its text and how many tokens to ask for."""

    prompt: str
    max_tokens: int


def length_bounds(length: int, range_ratio: float, floor_one: bool) -> tuple[int, int]:
    """vLLM's sampling interval for a length: floor below, ceil above (the output's low end at least 1)."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    low, high = math.floor(length * (1 - range_ratio)), math.ceil(length * (1 + range_ratio))
    return (max(low, 1), max(high, 1)) if floor_one else (low, high)


def sample_lengths(rng: np.random.Generator, length: int, range_ratio: float, n: int, floor_one: bool) -> list[int]:
    """``n`` lengths drawn uniformly (integers, both ends included) from :func:`length_bounds`."""
    low, high = length_bounds(length, range_ratio, floor_one)
    return [int(x) for x in rng.integers(low, high + 1, size=n)]


def random_prompts(n: int, input_len: int, output_len: int, range_ratio: float = 0.0,
                   seed: int = 0) -> list[PromptSpec]:  # fmt: skip
    """``n`` prompts of sampled word counts (at least one word), each with a sampled ``max_tokens``."""
    rng = np.random.default_rng(seed)
    inputs = sample_lengths(rng, input_len, range_ratio, n, floor_one=True)
    outputs = sample_lengths(rng, output_len, range_ratio, n, floor_one=True)
    return [PromptSpec(" ".join(rng.choice(WORDS, size=k)), m) for k, m in zip(inputs, outputs)]


def chat_prompts(n: int, output_len: int, range_ratio: float = 0.0, seed: int = 0) -> list[PromptSpec]:
    """``n`` real questions (the built-in list, shuffled and cycled), each with a sampled ``max_tokens``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(CHAT_QUESTIONS))
    outputs = sample_lengths(rng, output_len, range_ratio, n, floor_one=True)
    return [PromptSpec(CHAT_QUESTIONS[order[i % len(order)]], m) for i, m in enumerate(outputs)]
