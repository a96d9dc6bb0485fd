"""The continuous-batching loop: plan, build, one forward, sample, commit.

::

    Request ──> Scheduler.plan ──> StepPlan ──> build_batch ──> RaggedBatch
                                                       │
               sample <── logits <── TinyLM.forward(RaggedBatch, KV cache)
                  │
                  └──> commit: append tokens, advance num_computed, finish
                       requests, free KV, fire plugins, emit a StepRecord

Every step returns a :class:`StepRecord`, the raw material of every plot. The engine keeps the loop and
the public API; each feature that meets the loop has its own file: ``intake.py`` (checks), ``admission.py``,
``preemption.py`` (recompute, swap), ``forking.py`` (parallel sampling), ``kv_transfer.py``, ``hooks.py``.
"""

from __future__ import annotations

import numbers
import time
from collections import deque
from collections.abc import Iterable, Sequence

import torch

from ..errors import AdapterError, CBLabError, ConfigError, PluginError
from ..model.tiny_lm import TinyLM
from . import hooks, kv_transfer
from .admission import admit_planned
from .batch_builder import RaggedBatch, build_batch
from .config import EngineConfig
from .forking import check_group, fork_children, group_params, leave_group
from .intake import Intake, generate_args
from .kv_cache import PagedAllocator
from .parts import check_engine_args, make_kv_cache, make_proposer
from .preemption import Preemption, make_host_pool
from .records import EngineStats, StepRecord
from .request import Request, RequestState, SamplingParams
from .request_table import RequestTable
from .sampling import sample_step
from .scheduler import Scheduler, StepPlan
from .speculative import propose_drafts

__all__ = ["Engine", "EngineStats", "StepRecord", "make_kv_cache"]


class Engine(RequestTable):
    """Continuous batching over a :class:`TinyLM`: requests join and leave at token boundaries."""

    def __init__(
        self,
        model: TinyLM,
        config: EngineConfig | None = None,
        plugins: Iterable = (),
        draft_model: TinyLM | None = None,
    ) -> None:
        self.config = check_engine_args(model, config, draft_model)
        self.proposer = make_proposer(self.config, draft_model)
        # A draft model with a shorter context than a request needs is not an error: near and past its
        # max_position it proposes fewer tokens, then none, and the request decodes one token per step.
        self.draft_window = draft_model.config.max_position if self.config.speculative == "draft" else None
        self.stats = EngineStats()
        self.model = model.to(self.config.device)
        cfg = self.config
        self.scheduler = Scheduler(cfg.max_tokens_per_step, cfg.prefill_chunk_size, cfg.max_running, cfg.policy)
        self.budget = cfg.max_tokens_per_step  # SchedulerPlugins may change it between steps
        self.kv = make_kv_cache(self.model, cfg)
        self.swap = make_host_pool(self.model, cfg)
        self.preemption = Preemption(self.kv, self.swap, self.stats)
        mc = self.model.config
        self.intake = Intake(mc.vocab_size, mc.max_position, self.kv.num_slots, cfg.eos_token_id)
        self.requests: dict[int, Request] = {}
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        # every step's record, or the last keep_records of them: a server that runs for days must not keep all
        self.records: list[StepRecord] | deque[StepRecord] = [] if cfg.keep_records is None else deque(
            maxlen=cfg.keep_records
        )
        self.num_steps = 0  # steps taken, whatever records are kept: fairness and arrival steps count from it
        self.plugins: list = []
        self._attention_chain = None  # AttentionPlugins wrapped around the default, set on the model per forward
        self.adapters: dict = {}  # LoRA adapters by name (add_adapter); rows are routed per request
        self.forward_hooks: list[hooks.ForwardHook] = []  # told each forward's batch (the LoRA router)
        for p in plugins:
            self.add_plugin(p)

    # -- requests -----------------------------------------------------------------
    def check_request(self, prompt_ids: Sequence[int], max_new_tokens: int = 16, **options) -> Request:
        """The request ``add_request(prompt_ids, max_new_tokens, **options)`` would queue, checked and
        normalised; a typed error otherwise. Changes nothing: a caller that must check before it commits to
        anything (two engines, a server) asks this first."""
        return self.intake.check(self.requests, prompt_ids, max_new_tokens, adapters=self.adapters, **options)

    def add_request(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int = 16,
        request_id: int | None = None,
        sampling: SamplingParams | None = None,
        priority: int = 0,
        eos_token_id: int | None = None,
        adapter: str | None = None,
    ) -> int:
        """Queue a request; it joins the running batch at the next step with room for it."""
        req = self.check_request(
            prompt_ids, max_new_tokens, request_id=request_id, sampling=sampling, priority=priority,
            eos_token_id=eos_token_id, adapter=adapter,
        )  # fmt: skip
        self._enter(req)
        self.waiting.append(req)
        return req.request_id

    def add_request_group(
        self,
        prompt_ids: Sequence[int],
        n: int,
        max_new_tokens: int = 16,
        sampling: SamplingParams | None = None,
        priority: int = 0,
        eos_token_id: int | None = None,
    ) -> list[int]:
        """``n`` samples of one prompt (parallel sampling), computing the prompt once (``core/forking.py``).

        Sequence ``i`` samples with seed ``sampling.seed + i``, so its tokens equal those of
        ``add_request(prompt_ids, sampling=replace(sampling, seed=seed + i))`` alone. On a dense pool the
        sequences are independent requests."""
        first = self.check_request(prompt_ids, max_new_tokens, sampling=sampling, priority=priority,
                                   eos_token_id=eos_token_id)  # fmt: skip
        check_group(n, self.config, self.kv, first.prompt_len, first.max_new_tokens)
        ids = [self.add_request(first.prompt_ids, first.max_new_tokens, None, p, priority, first.eos_token_id)
               for p in group_params(first.sampling, n)]  # fmt: skip
        if isinstance(self.kv, PagedAllocator):
            parent = self.requests[ids[0]]
            parent.group_size, parent.forks = n, ids[1:]
            for rid in ids[1:]:  # they join at the fork, not through admission
                self.waiting.remove(self.requests[rid])
        return ids

    def _enter(self, req: Request, arrival_time: float | None = None) -> None:
        self.intake.enter(req)
        req.arrival_time = time.perf_counter() if arrival_time is None else arrival_time
        req.arrival_step = self.num_steps
        self.requests[req.request_id] = req

    def abort(self, request_id: int) -> None:
        """Stop a request now (its client went away): its KV, and host blocks if swapped, are freed at once.
        The tokens it has stay readable. A group's parent takes its not-yet-forked sequences with it."""
        self._end(self.request(request_id), aborted=True)

    def finish(self, request_id: int) -> None:
        """End a request now as done, not aborted: its caller found a stop string in its text (the engine sees
        ids, not text: ``real/text.py``). Its KV is freed at once, as :meth:`abort` frees it."""
        self._end(self.request(request_id), aborted=False)

    def _end(self, req: Request, aborted: bool) -> None:
        if req.is_finished:
            return
        for fork in leave_group(req, self.requests, self.waiting + self.running):
            self._mark_ended(fork, aborted)
        if req in self.running:
            self.kv.free(req.request_id)
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
            self.preemption.forget(req.request_id)
        self._mark_ended(req, aborted)

    def _mark_ended(self, req: Request, aborted: bool) -> None:
        req.state, req.aborted, req.stopped = RequestState.FINISHED, aborted, not aborted
        if aborted:
            self.stats.aborted += 1

    def output(self, request_id: int) -> list[int]:
        """The ids generated so far for a request."""
        return list(self.request(request_id).output_ids)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)  # a group's forks wait on their parent, which is here

    # -- LoRA adapters and the prefill/decode hand-over (core/kv_transfer.py) -----------------------
    def add_adapter(self, name: str, adapter) -> None:
        """Serve ``add_request(..., adapter=name)`` with this LoRA adapter (``advanced/lora.py``), batched with
        every other request. The adapter attaches itself: the core knows only its ``attach`` method."""
        if not callable(getattr(adapter, "attach", None)):
            raise AdapterError(f"add_adapter({name!r}, ...) needs a LoRAAdapter, got {adapter!r}")
        adapter.attach(self, name)

    # the hand-over of a prefilled request between engines lives in core/kv_transfer.py
    export_prefilled = kv_transfer.export_prefilled
    can_import = kv_transfer.can_import
    import_prefilled = kv_transfer.import_prefilled

    def remove_running(self, request_id: int) -> Request:
        """Take a running request out of this engine (it moves elsewhere): its KV freed, its id forgotten."""
        req = self.request(request_id)
        self.kv.free(request_id)
        self.running.remove(req)
        del self.requests[request_id]
        return req

    def add_running(self, req: Request, arrival_time: float) -> None:
        """Adopt a request whose K/V this engine's pool already holds (a hand-over): it decodes next step."""
        self._enter(req, arrival_time)
        self.running.append(req)

    # -- plugins ------------------------------------------------------------------
    def add_plugin(self, plugin) -> None:
        if not isinstance(plugin, (hooks.SchedulerPlugin, hooks.AttentionPlugin, hooks.CachePlugin)):
            raise PluginError(f"{plugin!r} is not a SchedulerPlugin, AttentionPlugin or CachePlugin")
        self.plugins.append(plugin)
        if isinstance(plugin, hooks.CachePlugin):
            self.kv.plugins.append(hooks.GuardedCachePlugin(plugin))
        if isinstance(plugin, hooks.AttentionPlugin):
            self._attention_chain = hooks.attention_chain(self.plugins, self.model.attend_cached)

    def _fire(self, hook: str, *args) -> None:
        for plugin in self.plugins:
            if isinstance(plugin, hooks.SchedulerPlugin):
                hooks.call_hook(plugin, hook, self, *args)

    # -- the loop -------------------------------------------------------------------
    def step(self) -> StepRecord:
        """Run one step: plan, one forward over the mixed batch, sample, commit."""
        start = time.perf_counter()
        self._fire("before_step")
        if not isinstance(self.budget, numbers.Integral) or isinstance(self.budget, bool) or self.budget < 1:
            raise ConfigError(f"engine.budget must be an int >= 1, got {self.budget!r} (set by a plugin?)")
        if not self.has_unfinished():
            raise CBLabError("nothing to run: every request has finished; add_request() first")
        drafts = propose_drafts(self.proposer, self.running, self.config.num_speculative_tokens, self.draft_window)
        plan = self.scheduler.plan(self.running, self.waiting, self.kv, self.budget, self.config.preemption, drafts)
        if not plan.chunks:
            raise CBLabError(f"the scheduler made no progress (budget={self.budget}); nothing can run")
        swapped = [r for r in plan.preempted if self.preemption.preempt(self.requests[r], self.running, self.waiting)]
        cfg = self.config
        for req in admit_planned(
            plan, self.requests, self.kv, self.preemption, not cfg.preemption, cfg.enable_prefix_caching, self.stats
        ):
            self.waiting.remove(req)
            self.running.append(req)
        copied = self.kv.prepare_writes(plan.chunks)  # slots for every chunk; shared blocks copied first
        self.stats.cow_copies += sum(len(pairs) for pairs in copied.values())
        # a stand-in model that reads no token (production.simulate's ShapeOnlyLM) may build a lighter batch
        batch = getattr(self.model, "build_batch", build_batch)(plan, self.requests, self.model.device)
        fwd_start = time.perf_counter()
        new_tokens = sample_step(plan, self._forward(batch), self.requests, self.stats)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        forward_s = time.perf_counter() - fwd_start
        forked = {c.request_id: self.requests[c.request_id].forks for c in plan.chunks
                  if self.requests[c.request_id].forks and c.request_id in new_tokens}  # fmt: skip
        finished = self._commit(plan, new_tokens)
        record = StepRecord(
            step=self.num_steps,
            plan=plan,
            sampled={rid: toks[-1] for rid, toks in new_tokens.items()},
            new_tokens=new_tokens,
            swapped=swapped,
            copied_blocks=copied,
            forked=forked,
            finished=[r.request_id for r in finished],
            running=[r.request_id for r in self.running],
            waiting=[r.request_id for r in self.waiting],
            kv=self.kv.usage(),
            block_tables={r: list(t) for r, t in getattr(self.kv, "block_tables", {}).items()},
            start_time=start,
            duration_s=0.0,
            forward_s=forward_s,
        )
        self.records.append(record)
        self.num_steps += 1
        for req in finished:
            self._fire("on_request_completion", req)
        self._fire("after_step", record)
        record.duration_s = time.perf_counter() - start
        return record

    def _forward(self, batch: RaggedBatch) -> torch.Tensor:
        """One forward over the whole batch; this engine's hooks are set on the (maybe shared) model for it only."""
        self.model.attention_hook = self._attention_chain
        for hook in self.forward_hooks:
            hook.begin(batch, self.requests)
        try:
            return self.model(batch, self.kv, impl=self.config.attention, via_flatten=self.config.kv_read == "flatten")
        finally:
            self.model.attention_hook = None
            for hook in self.forward_hooks:
                hook.end()

    def _commit(self, plan: StepPlan, new_tokens: dict[int, list[int]]) -> list[Request]:
        step = self.num_steps
        now = time.perf_counter()
        finished = []
        for c in plan.chunks:
            req = self.requests[c.request_id]
            req.last_scheduled_step = step
            tokens = new_tokens.get(c.request_id, [])
            req.num_computed = c.end - len(c.drafts) + (len(tokens) - 1 if c.drafts else 0)
            if c.drafts:  # rejected guesses leave garbage K/V behind: forget it
                self.kv.truncate(c.request_id, req.num_computed)
            kept = []
            for token in tokens:
                req.append_token(token)
                req.token_times.append(now)
                kept.append(token)
                if req.is_finished:
                    break
            if c.request_id in new_tokens:
                new_tokens[c.request_id] = kept
            if self.config.enable_prefix_caching:
                self.kv.register_full_blocks(req.request_id, req.all_ids)
            if req.forks and c.request_id in new_tokens:
                joined, done = fork_children(
                    self.kv, req, self.requests, new_tokens, now, reserve=not self.config.preemption
                )
                self.running += joined
                finished += done
            if req.is_finished:
                finished.append(req)
                self.kv.free(req.request_id)
                self.running.remove(req)
        return finished

    def run(self, progress: bool = False) -> list[StepRecord]:
        """Step until every request has finished; returns this run's records."""
        records = []
        bar = _progress_bar(len(self.waiting) + len(self.running)) if progress else None
        while self.has_unfinished():
            records.append(self.step())
            if bar is not None:
                bar.update(len(records[-1].finished))
        if bar is not None:
            bar.close()
        return records

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int] = 16,
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
        progress: bool = False,
    ) -> list[list[int]]:
        """Serve all prompts together; generated ids in input order."""
        first = self.intake.next_id
        checked = [self.check_request(p, m, request_id=first + i, sampling=s)  # all checked before any is queued
                   for i, (p, m, s) in enumerate(zip(*generate_args(prompts, max_new_tokens, sampling)))]  # fmt: skip
        ids = [self.add_request(r.prompt_ids, r.max_new_tokens, sampling=r.sampling) for r in checked]
        self.run(progress=progress)
        return [self.output(i) for i in ids]


def _progress_bar(total: int):
    """A bar of requests finished (tqdm, imported only when asked for)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="requests", unit="req")
