"""Drive an engine through a scenario, watching every forward; audit each step's plan as it comes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...core.batch_builder import batch_mask
from ...errors import CBLabError
from .scenarios import Scenario, StepSeen, fresh_model

MAX_STEPS = 400


class Verdict(Exception):
    """The run broke a rule: ``expected``/``got``/``hint`` become the failed case's lines."""

    def __init__(self, expected: str, got: str, hint: str) -> None:
        super().__init__(hint)
        self.expected, self.got, self.hint = expected, got, hint


@dataclass
class Tracked:
    """What the check knows about a request from the plans alone."""

    prompt_len: int
    max_new: int
    computed: int = 0
    generated: int = 0
    last_served: int = -1
    waiting_since: int | None = None  # step at which it started decoding without being served

    @property
    def known(self) -> int:
        return self.prompt_len + self.generated

    @property
    def finished(self) -> bool:
        return self.generated >= self.max_new

    @property
    def decoding(self) -> bool:
        return not self.finished and self.generated >= 1 and self.computed == self.known - 1


@dataclass
class Run:
    engine: object
    ids: list[int] = field(default_factory=list)  # request id of each join, in join order
    steps: list[StepSeen] = field(default_factory=list)


def learner_mask(engine, batch):
    """The mask the engine's attention uses: its own ``mask(batch)`` if it has one, else the library's."""
    own = getattr(engine, "mask", None)
    return own(batch) if callable(own) else batch_mask(batch)


def drive(engine_cls, scenario: Scenario, audit: bool = True) -> Run:
    """Run ``scenario`` on a fresh ``engine_cls(model, config)``; raises :class:`Verdict` on a broken rule."""
    model = fresh_model()
    run = Run(engine_cls(model, scenario.config()))
    play(run, model, scenario, audit)
    return run


def play(run: Run, model, scenario: Scenario, audit: bool = True) -> None:
    """Add the scenario's requests at their steps and step until done, auditing as it goes."""
    engine = run.engine
    seen: list = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(args[0] if args else None))
    tracked: dict[int, Tracked] = {}
    joins = scenario.joins_in_order()
    try:
        step, j = 0, 0
        while True:
            while j < len(joins) and (joins[j].at_step <= step or not engine.has_unfinished()):
                rid = engine.add_request(list(joins[j].prompt), joins[j].max_new_tokens)
                if rid in tracked:
                    raise Verdict(
                        "a new id for every request",
                        f"id {rid} given twice",
                        "add_request must return a fresh request id each time",
                    )
                run.ids.append(rid)
                tracked[rid] = Tracked(len(joins[j].prompt), joins[j].max_new_tokens)
                j += 1
            if not engine.has_unfinished():
                break
            if step >= MAX_STEPS:
                raise Verdict(
                    f"every request finished within {MAX_STEPS} steps",
                    "still unfinished",
                    "the engine stopped making progress: is every admitted request scheduled?",
                )
            before = len(seen)
            record = engine.step()
            plan = getattr(record, "plan", record)
            run.steps.append(StepSeen(plan, seen[before:]))
            if audit:
                audit_step(step, plan, seen[before:], tracked, scenario.budget)
            step += 1
    finally:
        handle.remove()
    if audit:
        lost = [rid for rid, t in tracked.items() if not t.finished]
        if lost:
            raise Verdict(
                "every request finished",
                f"has_unfinished() is False but {lost} never finished",
                "a request was lost: it left the queues without generating max_new_tokens tokens",
            )


def audit_step(step: int, plan, batches: list, tracked: dict[int, Tracked], budget: int) -> None:
    """The rules of one step, from its plan; updates ``tracked`` as the engine must have."""
    chunks = list(getattr(plan, "chunks", None) or [])
    if len(batches) != 1:
        raise Verdict(
            "one forward per step",
            f"step {step}: {len(batches)} forwards",
            "step() must run the model exactly once, on one ragged batch of every scheduled chunk"
            if batches
            else "step() never called model(batch, kv): build the batch and run one forward",
        )
    used = sum(c.length for c in chunks)
    if used > budget:
        raise Verdict(
            f"at most {budget} tokens per step",
            f"step {step}: {used} tokens {_show(chunks)}",
            f"budget overrun: the plan used {used} > max_tokens_per_step={budget}; cap every chunk by the budget left",
        )
    ids = [c.request_id for c in chunks]
    if len(set(ids)) != len(ids):
        raise Verdict(
            "each request at most once per step", f"step {step}: {_show(chunks)}", "a request appears twice in one plan"
        )
    for c in chunks:
        t = tracked.get(c.request_id)
        if t is None:
            raise Verdict("known requests only", f"step {step}: request {c.request_id}", "unknown request id")
        if t.finished:
            raise Verdict(
                "finished requests leave the batch",
                f"step {step}: request {c.request_id} scheduled again",
                "a request was scheduled after it finished (finished twice?): drop it from running",
            )
        if c.start != t.computed:
            first_decode = t.computed == t.prompt_len and c.start == t.prompt_len - 1
            hint = (
                "the last prompt token is fed again at the first decode, so its K/V is stored twice: decode "
                "starts at position len(prompt)"
                if first_decode
                else "a chunk starts where the request's computed tokens end (num_computed): none skipped or redone"
            )
            raise Verdict(
                f"request {c.request_id} chunk starts at {t.computed}", f"step {step}: starts at {c.start}", hint
            )
        if c.start + c.length > t.known:
            raise Verdict(
                f"request {c.request_id} computes at most up to {t.known}",
                f"step {step}: chunk to {c.start + c.length}",
                "a chunk cannot compute tokens the request does not have yet",
            )
    decoders = [rid for rid, t in tracked.items() if t.decoding]
    served = {c.request_id for c in chunks if c.request_id in decoders}
    prefill = [c for c in chunks if c.request_id not in decoders]
    first_prefill = next((i for i, c in enumerate(chunks) if c.request_id not in decoders), len(chunks))
    if any(c.request_id in decoders for c in chunks[first_prefill:]) or (prefill and len(served) < len(decoders)):
        raise Verdict(
            "decode chunks first, every decoder served before any prefill",
            f"step {step}: decoding {sorted(decoders)}, plan {_show(chunks)}",
            "decode first: each decoding request gets its one token before any prefill chunk is planned "
            "(prefill before decode delays every token of every running request)",
        )
    for rid in decoders:
        t = tracked[rid]
        if rid in served:
            t.waiting_since = None
        elif t.waiting_since is None:
            t.waiting_since = step
        patience = math.ceil(len(decoders) / max(1, budget)) + 1
        if t.waiting_since is not None and step - t.waiting_since >= patience:
            raise Verdict(
                f"every decoder served within {patience} steps",
                f"step {step}: request {rid} waiting since step {t.waiting_since}",
                "decode must be fair: serve the least recently served decoders first, or one starves",
            )
    for c in chunks:
        t = tracked[c.request_id]
        t.computed = c.start + c.length
        t.last_served = step
        if t.computed == t.known:
            t.generated += 1


def kv_leftovers(engine) -> str | None:
    """What is still held in the engine's KV cache after every request finished (None: all returned)."""
    kv = getattr(engine, "kv", None)
    if kv is None:
        return "the engine has no .kv attribute: keep the KV cache in self.kv so the check can inspect it"
    held = sorted(getattr(kv, "lengths", {}) or {})
    tables = {r: list(t) for r, t in (getattr(kv, "block_tables", {}) or {}).items() if t}
    free = getattr(kv, "free_blocks", None)
    total = getattr(kv, "num_blocks", None)
    if held or tables:
        return f"requests {sorted(set(held) | set(tables))} still hold KV ({sum(map(len, tables.values()))} blocks)"
    if free is not None and total is not None and len(free) != total:
        return f"only {len(free)} of {total} blocks are back on the free list"
    return None


def _show(chunks) -> str:
    return "[" + ", ".join(f"r{c.request_id}:{c.kind}@{c.start}+{c.length}" for c in chunks) + "]"


def safe_step_error(error: BaseException) -> str:
    kind = "engine error" if isinstance(error, CBLabError) else "exception"
    return f"{kind} {type(error).__name__}: {error}"
