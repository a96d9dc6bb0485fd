"""Exercise 12: the pool ran out. Whom to preempt, and how many blocks does that free?

::

    choose_victims(running, requester, blocks_needed, free_blocks, policy)
        -> (victim ids in the order they are preempted, blocks they free)

``running``: ``(request_id, arrival, priority, block_table)`` of every request
holding KV, the requester included; smaller ``arrival`` came earlier, smaller
``priority`` is more urgent. Preempt one victim at a time until
``free_blocks + freed >= blocks_needed``, never more: the newest first under
``"fcfs"``; under ``"priority"`` the least urgent (largest priority) first,
ties newest first. A victim frees only blocks nobody else holds: a block in
two tables (a shared prefix) stays. If the requester itself comes up as the
next victim it preempts itself and stops. The reference is the scheduler's own
:class:`~cblab_teach.core.scheduler.BlockLedger`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..core.request import Request
from ..core.scheduler import BlockLedger, Scheduler, StepPlan
from ._base import Case, Exercise, Mismatch

Running = list[tuple[int, int, int, list[int]]]


class _Pool:
    """The two questions the ledger asks the KV cache, answered from block tables."""

    def __init__(self, running: Running, requester: int, blocks_needed: int, free_blocks: int) -> None:
        self.num_free_blocks = free_blocks
        self.tables = {rid: table for rid, _, _, table in running}
        self.refs = Counter(b for table in self.tables.values() for b in table)
        self.requester, self.needed = requester, blocks_needed

    def blocks_needed(self, request_id: int, num_tokens: int, leaving: Sequence[int] = ()) -> int:
        return self.needed

    def blocks_released_by(self, request_ids: Sequence[int]) -> int:
        """Each victim frees the blocks no other table holds (the exercise's rule: a shared prefix stays)."""
        return sum(self.refs[b] == 1 for rid in request_ids for b in self.tables[rid])


def reference_choose_victims(
    running: Running, requester: int, blocks_needed: int, free_blocks: int, policy: str
) -> tuple[list[int], int]:
    """Ask the scheduler's ledger, exactly as ``Scheduler.plan`` does when a request needs blocks."""
    pool = _Pool(running, requester, blocks_needed, free_blocks)
    requests = {rid: Request(rid, [0], 1, arrival=arrival, priority=prio) for rid, arrival, prio, _ in running}
    ledger = BlockLedger(pool, list(requests.values()), Scheduler(1, 1, policy=policy).order_key)
    ledger.take(requests[requester], 0, StepPlan(budget=1))
    victims = [v.request_id for v in ledger.preempted]
    return victims, pool.blocks_released_by(victims)


def _tables(sizes: list[int], shared: int = 0) -> list[list[int]]:
    """Block tables of the given sizes; the first ``shared`` blocks of each are one shared prefix."""
    nxt = shared
    out = []
    for n in sizes:
        own = list(range(nxt, nxt + n))
        nxt += n
        out.append(list(range(shared)) + own)
    return out


def _running(arrivals: list[int], priorities: list[int], tables: list[list[int]]) -> Running:
    return [(10 + i, a, p, t) for i, (a, p, t) in enumerate(zip(arrivals, priorities, tables))]


class PreemptionExercise(Exercise):
    name = "ex12_preemption"
    title = "Choosing preemption victims and counting the blocks they free"
    entry = "choose_victims"
    course = "11_priority_preemption"
    hint = (
        "sort the candidates newest first (fcfs) or by (priority, arrival) largest first (priority); take victims "
        "one by one until free + freed >= needed; a victim frees only blocks no other table holds; stop when the "
        "requester itself is the victim"
    )

    @property
    def reference(self):
        return reference_choose_victims

    def fixed_cases(self) -> list[Case]:
        four = _running([0, 1, 2, 3], [0, 0, 0, 0], _tables([2, 2, 2, 2]))
        return [
            Case(
                "fcfs: the newest goes first",
                {"running": four, "requester": 10, "blocks_needed": 5, "free_blocks": 1, "policy": "fcfs"},
            ),
            Case(
                "fcfs: one victim is enough",
                {"running": four, "requester": 10, "blocks_needed": 2, "free_blocks": 1, "policy": "fcfs"},
            ),
            Case(
                "enough free blocks: nobody is preempted",
                {"running": four, "requester": 10, "blocks_needed": 2, "free_blocks": 2, "policy": "fcfs"},
            ),
            Case(
                "shared prefix blocks stay",
                {
                    "running": _running([0, 1, 2], [0, 0, 0], _tables([1, 1, 1], 3)),
                    "requester": 10,
                    "blocks_needed": 2,
                    "free_blocks": 0,
                    "policy": "fcfs",
                },
            ),
            Case(
                "priority: least urgent first, not newest",
                {
                    "running": _running([0, 1, 2, 3], [0, 5, 1, 0], _tables([2, 2, 2, 2])),
                    "requester": 10,
                    "blocks_needed": 4,
                    "free_blocks": 0,
                    "policy": "priority",
                },
            ),
            Case(
                "priority ties: newest first",
                {
                    "running": _running([0, 1, 2, 3], [1, 3, 3, 0], _tables([1, 1, 1, 1])),
                    "requester": 10,
                    "blocks_needed": 1,
                    "free_blocks": 0,
                    "policy": "priority",
                },
            ),
            Case(
                "the requester is the newest: it preempts itself",
                {"running": four, "requester": 13, "blocks_needed": 1, "free_blocks": 0, "policy": "fcfs"},
            ),
            Case(
                "arrival order is not list order",
                {
                    "running": _running([3, 0, 2, 1], [0, 0, 0, 0], _tables([1, 2, 3, 1])),
                    "requester": 11,
                    "blocks_needed": 3,
                    "free_blocks": 0,
                    "policy": "fcfs",
                },
            ),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        n = rng.randint(1, 6)
        arrivals = rng.sample(range(20), n)
        priorities = [rng.randint(0, 3) for _ in range(n)]
        shared = rng.choice([0, 0, 1, 2])
        tables = _tables([rng.randint(0, 4) for _ in range(n)], shared)
        running = _running(arrivals, priorities, tables)
        return {
            "running": running,
            "requester": rng.choice(running)[0],
            "blocks_needed": rng.randint(1, 8),
            "free_blocks": rng.randint(0, 3),
            "policy": rng.choice(["fcfs", "priority"]),
        }

    def judge(self, learner, case: Case) -> Mismatch | None:
        x = case.inputs
        expected = self.reference(**x)
        running = [(rid, a, p, list(t)) for rid, a, p, t in x["running"]]
        got = learner(running, x["requester"], x["blocks_needed"], x["free_blocks"], x["policy"])
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Mismatch(expected, got, "return a pair: (victim ids in order, blocks they free)")
        got = (list(got[0]), got[1])
        if got == (expected[0], expected[1]):
            return None
        return Mismatch(expected, tuple(got), _diagnose(got, expected, x))


def _diagnose(got: tuple[list, Any], expected: tuple[list[int], int], x: dict[str, Any]) -> str:
    victims, freed = got
    want, want_freed = expected
    by_id = {rid: (a, p) for rid, a, p, _ in x["running"]}
    tables = {rid: t for rid, _, _, t in x["running"]}
    held = sum(len(tables[v]) for v in victims if v in tables)
    if freed == held and held != _freed_by(victims, tables):
        return "a block shared with another request (a common prefix) is not freed by preempting one holder"
    if victims == want:
        return "count only the victims' blocks that appear in no other block table"
    if len(victims) > len(want) and victims[: len(want)] == want:
        return "preempted more than needed: stop as soon as free_blocks + freed >= blocks_needed"
    if not want:
        return "there are enough free blocks already: preempt nobody"
    if victims and all(v in by_id for v in victims):
        first = by_id[victims[0]]
        if x["policy"] == "fcfs" and first[0] == min(a for a, _ in by_id.values()):
            return "oldest first throws away the most work: under fcfs the newest request is preempted first"
        if x["policy"] == "priority":
            if first[1] < max(p for _, p in by_id.values()):
                return "under the priority policy the least urgent request (the largest priority value) goes first"
            return "priority ties are broken newest first (largest arrival)"
    if x["requester"] in want and x["requester"] not in victims:
        return "when the requester itself is the next victim, it preempts itself and the search stops"
    return "victims in order: newest first (fcfs) or (priority, arrival) largest first, until enough blocks are free"


def _freed_by(victims: list, tables: dict[int, list[int]]) -> int:
    refs = Counter(b for t in tables.values() for b in t)
    return sum(refs[b] == 1 for v in victims if v in tables for b in tables[v])


EXERCISE = PreemptionExercise()
