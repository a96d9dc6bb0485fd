"""Priority / SLA scheduling: urgent requests first, and a slice of every step's budget kept for them.

Ordering alone is not enough under continuous batching: an urgent request that
arrives while long, low-priority prompts are being prefilled would wait behind
their chunks, because running work is planned before newcomers. So each step
this plugin also *reserves* up to ``reserve_fraction`` of the budget for urgent
requests (``priority <= urgent_priority``). The reservation is work-conserving:
it never exceeds what urgent requests can use this step, so when none are
present the others get the whole budget and throughput is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import SchedulerPlugin

if TYPE_CHECKING:
    from ..core.engine import Engine
    from ..core.request import Request


class PriorityPlugin(SchedulerPlugin):
    """Switch the scheduler to priority order and reserve budget for urgent requests."""

    def __init__(self, reserve_fraction: float = 0.5, urgent_priority: int = 0) -> None:
        if not 0.0 <= reserve_fraction < 1.0:
            raise ConfigError(f"reserve_fraction must be in [0, 1), got {reserve_fraction!r}")
        self.reserve_fraction = reserve_fraction
        self.urgent_priority = urgent_priority
        self.reserved_history: list[int] = []  # tokens reserved at each step, for plots and tests

    def is_urgent(self, request: Request) -> bool:
        return request.priority <= self.urgent_priority

    def urgent_demand(self, engine: Engine) -> int:
        """Tokens urgent requests could use this step: one per decoder, one chunk per prefill."""
        chunk = engine.scheduler.prefill_chunk_size
        demand = 0
        for r in engine.running + engine.waiting:
            if self.is_urgent(r):
                demand += 1 if r.output_ids and r.num_pending == 1 else min(chunk, r.num_pending)
        return demand

    def before_step(self, engine: Engine) -> None:
        scheduler = engine.scheduler
        scheduler.policy = "priority"
        scheduler.reserved_priority = self.urgent_priority
        engine.waiting.sort(key=scheduler.order_key)
        cap = min(int(self.reserve_fraction * engine.budget), engine.budget - 1)  # others always keep >= 1 token
        scheduler.reserved_tokens = max(0, min(cap, self.urgent_demand(engine)))
        self.reserved_history.append(scheduler.reserved_tokens)
