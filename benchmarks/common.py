"""What every benchmark shares: the model sizes, latency metrics, the ideal bound, phase timers.

Sizes are chosen for 2 CPU cores: big enough that the forward pass (not Python)
is most of a step, small enough that ``make bench`` stays within minutes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch

from cblab_teach import ModelConfig, TinyLM
from cblab_teach.monitoring.metrics import RequestMetrics, percentile, request_metrics_from_times

VOCAB = 512


def model_config(quick: bool) -> ModelConfig:
    """hidden 256, 4 layers (quick: hidden 64, 2 layers): a step is mostly matrix math, not Python."""
    if quick:
        return ModelConfig(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=172)
    return ModelConfig(
        vocab_size=VOCAB, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=688
    )


def bench_model(quick: bool) -> TinyLM:
    return TinyLM(model_config(quick), seed=0).eval()


def hf_llama_config(quick: bool):
    """The same shapes as :func:`model_config`, as a Hugging Face ``LlamaConfig``."""
    from transformers import LlamaConfig

    c = model_config(quick)
    return LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.kv_heads,
        max_position_embeddings=c.max_position,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )


def latencies(token_times: dict[int, list[float]], t0: float) -> list[RequestMetrics]:
    """TTFT, TPOT and E2E of each request, all arriving together at ``t0`` (an offline batch)."""
    return [request_metrics_from_times(rid, t0, times) for rid, times in token_times.items()]


def token_times_from_records(records: Iterable) -> dict[int, list[float]]:
    """When each request got each token: the end of the step that produced it (works for both engines)."""
    times: dict[int, list[float]] = {}
    for r in records:
        end = r.start_time + r.duration_s
        produced = r.new_tokens or {rid: [tok] for rid, tok in r.sampled.items()}
        for rid, toks in produced.items():
            times.setdefault(rid, []).extend([end] * len(toks))
    return times


def latency_summary(lat: list[RequestMetrics], prefix: str = "") -> dict[str, float]:
    def col(name: str) -> list[float]:
        return [v for v in (getattr(x, name) for x in lat) if v is not None]

    out = {}
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        base = name.removesuffix("_s")
        out[f"{prefix}{base}_p50_s"] = percentile(col(name), 50)
        out[f"{prefix}{base}_p90_s"] = percentile(col(name), 90)
    return out


def static_steps(lengths: Sequence[int], batch_size: int) -> int:
    """Steps static batching needs if every step costs the same: each batch runs as long as its longest."""
    return sum(max(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))


def continuous_steps(lengths: Sequence[int], slots: int) -> int:
    """Steps continuous batching needs with ``slots`` concurrent requests, one token each per step.

    Requests take a free slot in arrival order the step after one frees up
    (list scheduling): the bound if prefill fits in a request's first step.
    """
    free_at = [0] * min(slots, len(lengths))
    for n in lengths:
        i = min(range(len(free_at)), key=free_at.__getitem__)
        free_at[i] += n
    return max(free_at, default=0)


def ideal_speedup(lengths: Sequence[int], batch_size: int) -> float:
    """Static steps over continuous steps, from output lengths alone: the most continuous batching can win."""
    return static_steps(lengths, batch_size) / continuous_steps(lengths, batch_size)


@contextmanager
def patched(obj, name: str, wrapper: Callable):
    """Replace ``obj.name`` by ``wrapper(original)`` for the duration of the block."""
    own = name in vars(obj)  # an instance attribute, or one found on its class
    original = getattr(obj, name)
    setattr(obj, name, wrapper(original))
    try:
        yield
    finally:
        if own:
            setattr(obj, name, original)
        else:
            delattr(obj, name)


class PhaseTimer:
    """Accumulates wall time per named phase; ``wrap(name)`` makes a timing decorator."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str) -> Callable[[Callable], Callable]:
        def decorate(fn: Callable) -> Callable:
            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
                    self.calls[name] = self.calls.get(name, 0) + 1

            return timed

        return decorate


def timed_call(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def median_time(fn: Callable, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def environment() -> dict:
    """Where the numbers come from (goes into every JSON result)."""
    import os
    import platform

    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
