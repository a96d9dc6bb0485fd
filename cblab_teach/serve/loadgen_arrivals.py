"""When each request leaves: Poisson arrivals at a request rate, as ``vllm bench serve`` schedules them.

vLLM's ``get_request`` (``vllm/benchmarks/serve.py``) draws the gaps between requests from a gamma distribution
with shape ``burstiness`` and scale ``1 / (rate * burstiness)`` (burstiness 1: exponential gaps, a Poisson
process), adds them up, then rescales the sums so the last request leaves at exactly ``n / rate`` seconds (so
runs with different seeds offer the same load). Rate ``inf`` sends everything at once.
"""

from __future__ import annotations

import math

import numpy as np


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds after the start at which each of ``n`` requests is sent (non-decreasing)."""
    if n < 1:
        raise ValueError(f"need at least one request, got {n}")
    if not rate > 0:
        raise ValueError(f"the request rate must be > 0 (inf: all at once), got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(rate):
        return [0.0] * n
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / rate)  # no randomness left: evenly spaced
    else:
        gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(gaps)
    times *= (n / rate) / times[-1]  # vLLM's normalisation: the last one leaves at n / rate
    return [float(t) for t in times]
