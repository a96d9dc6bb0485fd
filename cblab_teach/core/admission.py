"""Admission: the requests a plan admits get their KV, in an order that keeps the plan's promises.

Three kinds of request can be admitted in one step: a new one, a new one whose leading blocks are in the
prefix cache, and one preempted by swap that resumes. A swap-in takes fresh blocks, and when none is
free it evicts the least recently used *idle cached* block, which may be one the plan counted as a
cache hit for a request admitted after it. So every admitted request is given its (reserved) table
first, cached prefixes are claimed next, and swap-ins run last.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import InvariantError
from .kv_cache import KVCache
from .preemption import Preemption
from .records import EngineStats
from .request import Request, RequestState
from .scheduler import StepPlan


def admit_planned(
    plan: StepPlan,
    requests: Mapping[int, Request],
    kv: KVCache,
    preemption: Preemption,
    reserve: bool,
    prefix_caching: bool,
    stats: EngineStats,
) -> list[Request]:
    """Give each request of ``plan.admitted`` its KV (with ``reserve``, its worst case promised, for every
    sequence a group forks into); returns them, in plan order, ready to run."""
    admitted = [requests[rid] for rid in plan.admitted]
    for req in admitted:
        group = {"copies": req.group_size} if req.group_size > 1 else {}
        kv.admit(req.request_id, req.max_total_tokens, reserve=reserve, **group)
    resumed = [r for r in admitted if preemption.is_swapped(r.request_id)]
    if prefix_caching:
        for req in (r for r in admitted if r not in resumed):
            req.num_computed = kv.claim_prefix(req.request_id, req.all_ids)
            stats.prefix_hit_tokens += req.num_computed
            planned = plan.cached_tokens.get(req.request_id, 0)
            if req.num_computed != planned:
                raise InvariantError(
                    f"request {req.request_id}: the plan counted {planned} cached prompt tokens but "
                    f"{req.num_computed} were found at admission"
                )
    for req in resumed:
        preemption.swap_in(req)  # it resumes exactly where it stopped
    for req in admitted:
        req.state = RequestState.PREFILL
    return admitted
