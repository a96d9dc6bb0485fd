"""What the dashboard shows: the last steps and the last requests, summarised in the engine's thread.

The engine loop calls :meth:`LiveView.step` with each :class:`~cblab_teach.core.records.StepRecord` and
:meth:`LiveView.request` with each request that ends; ``GET /dashboard/state`` reads :meth:`LiveView.snapshot`
from an HTTP handler. Only plain numbers cross the thread boundary, under a lock: a handler never reads the engine.
"""

from __future__ import annotations

import threading
from collections import deque

from ..core.records import StepRecord

STEPS_SHOWN = 120  # about a minute of steps at the tiny model's pace; enough to see load come and go
REQUESTS_SHOWN = 12


def step_summary(record: StepRecord) -> dict:
    """A step as the budget bar draws it: decode and prefill tokens against the budget, and who waits."""
    plan, kv = record.plan, record.kv
    return {
        "step": record.step,
        "decode": plan.decode_tokens,
        "prefill": plan.prefill_tokens,
        "budget": record.budget,
        "running": len(record.running),
        "waiting": len(record.waiting),
        "kv_used": kv.reserved_slots / kv.total_slots if kv.total_slots else 0.0,
        "forward_ms": record.forward_s * 1000,
    }


class LiveView:
    """The last :data:`STEPS_SHOWN` steps and :data:`REQUESTS_SHOWN` finished requests, for the dashboard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: deque[dict] = deque(maxlen=STEPS_SHOWN)
        self._requests: deque[dict] = deque(maxlen=REQUESTS_SHOWN)
        self._served = 0

    def step(self, record: StepRecord) -> None:
        summary = step_summary(record)
        with self._lock:
            self._steps.append(summary)

    def request(self, request_id: int, finish_reason: str | None, arrival: float, token_times: list[float],
                prompt_len: int) -> None:  # fmt: skip
        """A request ended: its TTFT and TPOT (as ``/metrics`` counts them) for the table of recent requests."""
        ttft = token_times[0] - arrival if token_times else None
        n = len(token_times)
        tpot = (token_times[-1] - token_times[0]) / (n - 1) if n > 1 else None
        row = {"id": request_id, "finish_reason": finish_reason, "prompt_tokens": prompt_len, "output_tokens": n,
               "ttft_ms": None if ttft is None else ttft * 1000, "tpot_ms": None if tpot is None else tpot * 1000}  # fmt: skip
        with self._lock:
            self._requests.append(row)
            self._served += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"steps": list(self._steps), "requests": list(self._requests)[::-1], "served": self._served}
