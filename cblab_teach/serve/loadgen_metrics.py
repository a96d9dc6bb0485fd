"""From per-request records to a benchmark's numbers, with ``vllm bench serve``'s definitions.

The definitions are vLLM's ``calculate_metrics`` (``vllm/benchmarks/serve.py``) over what its request functions
record (``vllm/benchmarks/lib/endpoint_request_func.py``):

* **TTFT**: from sending the request to the first streamed chunk that carries generated text.
* **ITL**: every gap between two consecutive such chunks (all requests' gaps pooled).
* **E2E latency**: from sending the request to the last chunk before ``[DONE]`` (usage chunk included, as
  vLLM's chat client counts it).

One deliberate difference: vLLM's clients count any chunk with a choice as a token, so a chat stream's opening
``{"role": "assistant"}`` chunk stops its TTFT clock. vLLM's own server sends that chunk with the first token;
this course's server (like others) sends it at once, before any prefill, so here only chunks with text count:
a role-only or finish-only chunk is no token, and the time to first token stays the time to the first token.
* **TPOT** of a request: ``(latency - TTFT) / (output_tokens - 1)``, only for requests with more than one
  output token; for goodput a one-token request's TPOT counts as 0 (vLLM's note says the same).
* **Goodput**: completed requests meeting *every* given SLO (``value <= slo``), per second of the run.
* Throughputs: completed requests, output tokens, and input plus output tokens, each per second of the run.
* Summaries: mean, median, standard deviation and percentiles with numpy's defaults (linear interpolation);
  an empty list summarises to 0, as in vLLM.

Token counts are the server's own ``usage`` (``stream_options.include_usage``); only when a server sends none
are output tokens counted as text-carrying chunks (vLLM tokenizes the text instead; a loadgen for any server has
no tokenizer). Nothing here does I/O: a test feeds it hand-made records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What one request did, as the client saw it (seconds, from the moment it was sent)."""

    success: bool
    max_tokens: int = 0  # what was asked for
    prompt_tokens: int = 0  # the server's usage (0: it sent none)
    output_tokens: int = 0  # the server's usage, or the text-carrying chunks if it sent none
    usage_reported: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    sent_at: float = 0.0  # seconds after the run started
    text: str = ""
    error: str = ""

    @property
    def tpot(self) -> float:
        """(latency - TTFT) / (output_tokens - 1); 0 for a request with at most one token (vLLM's convention)."""
        return (self.latency - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


def summarize(values_s: Sequence[float], name: str) -> dict[str, float]:
    """``mean_<name>_ms``, ``median_…``, ``std_…`` and ``p50/p90/p99_…`` of values given in seconds."""
    v = np.asarray(values_s if len(values_s) else [0.0], dtype=float) * 1000.0
    out = {f"mean_{name}_ms": float(v.mean()), f"median_{name}_ms": float(np.median(v)),
           f"std_{name}_ms": float(v.std())}  # fmt: skip
    out.update({f"p{p}_{name}_ms": float(np.percentile(v, p)) for p in PERCENTILES})
    return out


def is_good(record: RequestRecord, slo_ms: dict[str, float]) -> bool:
    """Does a completed request meet every SLO given (keys ``ttft``, ``tpot``, ``e2el``, in ms)?"""
    value_s = {"ttft": record.ttft, "tpot": record.tpot, "e2el": record.latency}
    return all(value_s[k] <= v / 1000.0 for k, v in slo_ms.items())


def compute_metrics(records: Sequence[RequestRecord], duration_s: float,
                    slo_ms: dict[str, float] | None = None) -> dict:  # fmt: skip
    """The run's numbers, keyed as vLLM's result JSON keys them; ``request_goodput`` is None without SLOs."""
    if duration_s <= 0:
        raise ValueError(f"the run's duration must be > 0, got {duration_s}")
    slo_ms = {k: float(v) for k, v in (slo_ms or {}).items() if v is not None}
    if unknown := set(slo_ms) - {"ttft", "tpot", "e2el"}:
        raise ValueError(f"unknown SLO(s) {sorted(unknown)}: use ttft, tpot, e2el")
    done = [r for r in records if r.success]
    total_input = sum(r.prompt_tokens for r in done)
    total_output = sum(r.output_tokens for r in done)
    out = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) / duration_s,
        "request_goodput": sum(is_good(r, slo_ms) for r in done) / duration_s if slo_ms else None,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
        "usage_reported": all(r.usage_reported for r in done),
    }
    out.update(summarize([r.ttft for r in done], "ttft"))
    out.update(summarize([r.tpot for r in done if r.output_tokens > 1], "tpot"))
    out.update(summarize([gap for r in done for gap in r.itl], "itl"))
    out.update(summarize([r.latency for r in done], "e2el"))
    return out
