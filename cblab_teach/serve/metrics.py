"""``GET /metrics``: the engine's state and each request's latencies in Prometheus text format.

Names are vLLM's with a ``cblab:`` prefix, so a dashboard built for one reads the other. vLLM defines them in
``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``): ``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (a fraction, 1 = full, despite the name),
``vllm:time_to_first_token_seconds``, ``vllm:time_per_output_token_seconds``, ``vllm:e2e_request_latency_seconds``
and ``vllm:request_success_total`` labelled by ``finished_reason``; the buckets below are its buckets.
vLLM's ``time_per_output_token_seconds`` observes every gap between two tokens of a request
(``vllm/v1/metrics/stats.py``; renamed ``inter_token_latency_seconds`` in vLLM 0.11), so ours does too;
``cblab:request_time_per_output_token_seconds`` (vLLM's later per-request metric) observes each request's
TPOT = (E2E - TTFT) / (tokens - 1) once. ``cblab:request_aborted_total`` (clients that went away) is this
server's own (vLLM's ``request_success_total`` has a ``finished_reason`` label whose values include
``abort``). The ``finished_reason`` label is what the client was told: when the token that reaches
``max_tokens`` also completes a stop string, the engine ended the request for its length but the answer says
``stop``, and so does the label. The engine loop learns it from the HTTP side (``EngineLoop.told``).

Every value is set from the engine loop's thread (prometheus-client is thread-safe), never by reading the
engine from an HTTP handler.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vllm/v1/metrics/loggers.py's buckets
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class ServerMetrics:
    """One registry per server, so two servers in one process (tests, a notebook) never share counts."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["model_name"]

        def one(metric):
            return metric.labels(model_name)

        self.running = one(Gauge("cblab:num_requests_running", "Requests holding KV in the running batch.",
                                 labels, registry=r))  # fmt: skip
        self.waiting = one(Gauge("cblab:num_requests_waiting", "Requests waiting to be admitted.", labels, registry=r))
        self.kv_usage = one(Gauge("cblab:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                                  labels, registry=r))  # fmt: skip
        self.ttft = one(Histogram("cblab:time_to_first_token_seconds", "Time to first token in seconds.", labels,
                                  buckets=TTFT_BUCKETS, registry=r))  # fmt: skip
        self.itl = one(Histogram("cblab:time_per_output_token_seconds",
                                 "Time between two output tokens of a request in seconds.", labels,
                                 buckets=TPOT_BUCKETS, registry=r))  # fmt: skip
        self.tpot = one(Histogram("cblab:request_time_per_output_token_seconds",
                                  "Per request: (E2E - TTFT) / (output tokens - 1), in seconds.", labels,
                                  buckets=TPOT_BUCKETS, registry=r))  # fmt: skip
        self.e2e = one(Histogram("cblab:e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                                 labels, buckets=E2E_BUCKETS, registry=r))  # fmt: skip
        success = Counter("cblab:request_success", "Requests that finished (stop or length).",
                          labels + ["finished_reason"], registry=r)  # fmt: skip
        self.success = {reason: success.labels(model_name, reason) for reason in ("stop", "length")}
        self.aborted = one(Counter("cblab:request_aborted", "Requests aborted because their client went away.",
                                   labels, registry=r))  # fmt: skip
        self.prompt_tokens = one(Counter("cblab:prompt_tokens", "Prompt tokens of finished requests.", labels,
                                         registry=r))  # fmt: skip
        self.generation_tokens = one(Counter("cblab:generation_tokens", "Generated tokens of finished requests.",
                                             labels, registry=r))  # fmt: skip

    def set_state(self, running: int, waiting: int, kv_usage: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_usage.set(kv_usage)

    def request_done(self, arrival: float, token_times: list[float], prompt_len: int, end: float) -> None:
        """A request the engine ended on its own (not aborted): its latencies from the HTTP arrival time."""
        if token_times:
            self.ttft.observe(token_times[0] - arrival)
            for a, b in zip(token_times, token_times[1:]):
                self.itl.observe(b - a)
            if len(token_times) > 1:
                self.tpot.observe((token_times[-1] - token_times[0]) / (len(token_times) - 1))
        self.e2e.observe(end - arrival)
        self.prompt_tokens.inc(prompt_len)
        self.generation_tokens.inc(len(token_times))

    def request_outcome(self, finish_reason: str) -> None:
        """How one choice ended, as its client was told: ``stop`` or ``length`` (a success), or ``abort``."""
        if finish_reason == "abort":
            self.aborted.inc()
        else:
            self.success.get(finish_reason, self.success["length"]).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
