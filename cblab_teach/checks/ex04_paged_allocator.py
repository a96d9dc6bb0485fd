"""Exercise 4: a paged KV allocator -- a shared block pool, a free list, a block table per request.

The learner writes a small class (one number per token stands in for its K/V)::

    kv = PagedKV(num_blocks, block_size)   # .free_blocks, .block_tables, .lengths, .pool
    kv.allocate(rid); kv.append(rid, values); kv.flatten(rid) -> tensor; kv.free(rid)

The check replays sequences of operations on the learner's class and on the
engine's :class:`PagedAllocator`, and after every operation asks: is any block
in two tables or both in a table and on the free list (handed out twice)? Are
all blocks accounted for? Does a request hold exactly the blocks its tokens
need? Does ``flatten`` give back exactly the tokens appended, trimmed?
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import torch

from ..core.kv_cache import PagedAllocator
from ._base import Case, Exercise, Mismatch


class ReferencePagedKV:
    """The learner's interface, backed by the engine's :class:`PagedAllocator` (1 layer, 1 head, dim 1)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.kv = PagedAllocator(1, 1, 1, num_blocks, block_size, dtype=torch.float64)
        self.block_size = block_size
        self.free_blocks = self.kv.free_blocks
        self.block_tables = self.kv.block_tables
        self.lengths = self.kv.lengths

    def allocate(self, request_id: int) -> None:
        self.kv.admit(request_id, 1, reserve=False)

    def append(self, request_id: int, values: torch.Tensor) -> None:
        start = self.kv.lengths[request_id]
        self.kv.ensure(request_id, start + len(values))
        positions = torch.arange(start, start + len(values))
        slots = self.kv.slots([request_id], torch.zeros_like(positions), positions)
        data = torch.as_tensor(values, dtype=torch.float64).view(-1, 1, 1)
        self.kv.write(0, slots, data, data)

    def flatten(self, request_id: int) -> torch.Tensor:
        return self.kv.flatten(0, request_id)[0].flatten()

    def free(self, request_id: int) -> None:
        self.kv.free(request_id)


def _ops_case(num_blocks: int, block_size: int, ops: list[tuple]) -> dict[str, Any]:
    return {"num_blocks": num_blocks, "block_size": block_size, "ops": ops}


def _values(rid: int, start: int, n: int) -> list[float]:
    """Distinct, readable values: request 2's token 5 is 2.05."""
    return [round(rid + (start + i) / 100, 2) for i in range(n)]


class PagedAllocatorExercise(Exercise):
    name = "ex04_paged_allocator"
    title = "A paged KV allocator"
    entry = "PagedKV"
    course = "05_dense_vs_paged_kv"
    hint = (
        "append: take a block (free_blocks.pop()) only when the last block is full; write value i at "
        "pool[table[pos // block_size], pos % block_size]. flatten: concatenate the table's blocks and keep "
        "lengths[rid] values. free: put every block of the table back on free_blocks"
    )
    num_random = 10

    @property
    def reference(self):
        return ReferencePagedKV

    def fixed_cases(self) -> list[Case]:
        return [
            Case("fill exactly one block", _ops_case(4, 4, [("allocate", 0), ("append", 0, 4), ("flatten", 0)])),
            Case(
                "one token past a block",
                _ops_case(4, 4, [("allocate", 0), ("append", 0, 5), ("flatten", 0), ("free", 0)]),
            ),
            Case(
                "prefill then decode one token at a time",
                _ops_case(
                    4,
                    3,
                    [("allocate", 0), ("append", 0, 2), ("append", 0, 1), ("append", 0, 1), ("flatten", 0)]
                    + [("free", 0)],
                ),
            ),
            Case(
                "two requests interleaved",
                _ops_case(
                    6,
                    2,
                    [("allocate", 0), ("allocate", 1), ("append", 0, 3), ("append", 1, 2), ("append", 0, 2)]
                    + [("flatten", 0), ("flatten", 1), ("free", 0), ("free", 1)],
                ),
            ),
            Case(
                "freed blocks are reused",
                _ops_case(
                    3,
                    2,
                    [("allocate", 0), ("append", 0, 6), ("free", 0), ("allocate", 1), ("append", 1, 5)]
                    + [("flatten", 1), ("free", 1)],
                ),
            ),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        num_blocks, block_size = rng.randint(4, 10), rng.randint(1, 4)
        live: dict[int, int] = {}
        used_blocks, next_id, ops = 0, 0, []
        for _ in range(rng.randint(4, 14)):
            roll = rng.random()
            if roll < 0.25 or not live:
                ops.append(("allocate", next_id))
                live[next_id] = 0
                next_id += 1
            elif roll < 0.7:
                rid = rng.choice(list(live))
                room = (num_blocks - used_blocks) * block_size + (-live[rid]) % block_size
                if room == 0:
                    continue
                n = rng.randint(1, min(room, 2 * block_size + 1))
                used_blocks += math.ceil((live[rid] + n) / block_size) - math.ceil(live[rid] / block_size)
                live[rid] += n
                ops.append(("append", rid, n))
            elif roll < 0.85:
                ops.append(("flatten", rng.choice(list(live))))
            else:
                rid = rng.choice(list(live))
                used_blocks -= math.ceil(live.pop(rid) / block_size)
                ops.append(("free", rid))
        ops += [("flatten", rid) for rid in live] + [("free", rid) for rid in live]
        return _ops_case(num_blocks, block_size, ops)

    def describe(self, case: Case) -> str:
        i = case.inputs
        ops = "; ".join(_op_text(op) for op in i["ops"])
        return f"PagedKV(num_blocks={i['num_blocks']}, block_size={i['block_size']}); {ops}"

    def judge(self, learner, case: Case) -> Mismatch | None:
        num_blocks, block_size = case.inputs["num_blocks"], case.inputs["block_size"]
        mine, ref = learner(num_blocks, block_size), ReferencePagedKV(num_blocks, block_size)
        for step, op in enumerate(case.inputs["ops"]):
            kind, rid = op[0], op[1]
            where = f"after op {step + 1} ({_op_text(op)}): "
            if kind == "append":
                values = torch.tensor(_values(rid, ref.lengths[rid], op[2]), dtype=torch.float64)
                ref.append(rid, values)
                mine.append(rid, values.clone())
            elif kind == "flatten":
                expected = ref.flatten(rid)
                got = mine.flatten(rid)
                if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
                    shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                    return Mismatch(
                        expected, got, where + f"flatten gave {shape}, not {list(expected.shape)}: keep lengths[rid]"
                    )
                if not torch.allclose(got.to(expected.dtype), expected):
                    return Mismatch(expected, got, where + "flatten reads the table's blocks in order, then trims")
            else:
                getattr(ref, kind)(rid)
                getattr(mine, kind)(rid)
            problem = _invariants(mine, ref, num_blocks)
            if problem:
                return Mismatch(_state(ref), _state(mine), where + problem)
        return None


def _op_text(op: tuple) -> str:
    return f"append({op[1]}, {op[2]} tokens)" if op[0] == "append" else f"{op[0]}({op[1]})"


def _state(kv) -> str:
    return f"block_tables={dict(kv.block_tables)} free_blocks={sorted(kv.free_blocks)}"


def _invariants(mine, ref, num_blocks: int) -> str | None:
    """The allocator's promises, in the order a learner would want to hear about them."""
    tables = {rid: list(t) for rid, t in mine.block_tables.items()}
    counts = Counter(b for t in tables.values() for b in t)
    twice = sorted(b for b, n in counts.items() if n > 1)
    if twice:
        return f"block(s) {twice} are in two block tables at once: a block was handed out twice (pop it)"
    on_both = sorted(set(counts) & set(mine.free_blocks))
    if on_both:
        return f"block(s) {on_both} are in a block table and on the free list: a block was handed out twice"
    if len(set(mine.free_blocks)) != len(mine.free_blocks):
        return "a block is on the free list twice (freed twice?)"
    if set(tables) != set(ref.block_tables):
        return f"requests holding blocks: expected {sorted(ref.block_tables)}, got {sorted(tables)}"
    for rid, table in tables.items():
        if len(table) != len(ref.block_tables[rid]):
            return (
                f"request {rid} holds {len(table)} block(s) for {ref.lengths[rid]} token(s); it needs exactly "
                f"{len(ref.block_tables[rid])}: take a new block only when the last one is full"
            )
    if len(mine.free_blocks) + sum(counts.values()) != num_blocks:
        return (
            f"{len(mine.free_blocks)} free + {sum(counts.values())} in tables != {num_blocks} blocks: "
            "free() must return every block of the request"
        )
    return None


EXERCISE = PagedAllocatorExercise()
