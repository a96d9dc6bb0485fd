"""One log line per step, through the standard :mod:`logging` module (so it can be filtered or silenced)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .base import SchedulerPlugin

if TYPE_CHECKING:
    from ..core.engine import Engine, StepRecord
    from ..core.request import Request


class LoggingPlugin(SchedulerPlugin):
    """Logs each step's work and each finished request at ``level`` on ``logger`` (``cblab_teach.engine``)."""

    def __init__(self, logger: logging.Logger | str = "cblab_teach.engine", level: int = logging.INFO) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def after_step(self, engine: Engine, record: StepRecord) -> None:
        plan = record.plan
        self.logger.log(
            self.level,
            "step %d: budget %d, decode %d, prefill %d, unused %d | running %d, waiting %d, finished %s | "
            "KV %d/%d slots",
            record.step,
            plan.budget,
            plan.decode_tokens,
            plan.prefill_tokens,
            plan.unused,
            len(record.running),
            len(record.waiting),
            record.finished,
            record.kv.used_slots,
            record.kv.total_slots,
        )

    def on_request_completion(self, engine: Engine, request: Request) -> None:
        self.logger.log(
            self.level, "request %s finished: %d tokens generated", request.request_id, len(request.output_ids)
        )
