"""The continuous-batching loop: plan, build, one forward, sample, commit.

::

    Request ──> Scheduler.plan ──> StepPlan ──> build_batch ──> RaggedBatch
                                                       │
               sample <── logits <── TinyLM.forward(RaggedBatch, KV cache)
                  │
                  └──> commit: append tokens, advance num_computed, finish
                       requests, free KV, fire plugins, emit a StepRecord

Every step returns a :class:`StepRecord`, the raw material of every plot.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..errors import (
    CapacityError,
    CBLabError,
    ConfigError,
    DuplicateRequestError,
    PluginError,
    RequestError,
    UnknownAdapterError,
    UnknownRequestError,
)
from ..model.tiny_lm import TinyLM
from . import kv_transfer
from .batch_builder import build_batch
from .config import EngineConfig
from .kv_cache import DenseKVCache, KVCache, KVUsage, PagedAllocator
from .kv_transfer import PrefilledRequest
from .request import Request, RequestState, SamplingParams, token_ids
from .sampling import accept_drafts, sample_token, verify_sampled
from .scheduler import Scheduler, StepPlan, is_decoding
from .speculative import DraftModelProposer, PromptLookupProposer
from .swap import HostKVPool


@dataclass
class StepRecord:
    """What happened in one step, as plain data."""

    step: int
    plan: StepPlan
    sampled: dict[int, int]  # request id -> token produced this step
    finished: list[int]
    running: list[int]  # holding KV after the step
    waiting: list[int]
    kv: KVUsage
    block_tables: dict[int, list[int]]  # paged layout only; {} for dense
    start_time: float
    duration_s: float
    forward_s: float
    extra: dict = field(default_factory=dict)  # plugins may annotate
    new_tokens: dict[int, list[int]] = field(default_factory=dict)  # every token appended this step
    swapped: list[int] = field(default_factory=list)  # of the preempted, those whose K/V went to the host pool
    copied_blocks: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # copy-on-write: rid -> (old, new)
    forked: dict[int, list[int]] = field(default_factory=dict)  # parent id -> sequences that forked from it

    @property
    def preempted(self) -> list[int]:
        return self.plan.preempted

    @property
    def budget(self) -> int:
        return self.plan.budget

    @property
    def used(self) -> int:
        return self.plan.used

    @property
    def tokens(self) -> dict[int, tuple[str, int]]:
        """request id -> (kind, tokens computed this step)."""
        return {c.request_id: (c.kind, c.length) for c in self.plan.chunks}

    @property
    def overhead_s(self) -> float:
        return self.duration_s - self.forward_s


@dataclass
class EngineStats:
    """Counters of the advanced features, for reports and tests."""

    preemptions: int = 0
    recomputed_tokens: int = 0  # KV thrown away by preemption and computed again
    swap_outs: int = 0  # preemptions whose K/V went to the host pool (preemption="swap") instead
    swapped_out_bytes: int = 0  # K/V bytes copied to the host pool
    swapped_in_bytes: int = 0  # and back
    prefix_hit_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    cow_copies: int = 0  # shared blocks copied before a write (parallel sampling)
    draft_tokens: int = 0  # speculative tokens proposed and verified
    accepted_tokens: int = 0  # of those, kept

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    def __repr__(self) -> str:  # one readable line; the fields stay plain ints
        swapped = f", {self.swap_outs} swapped out ({self.swapped_out_bytes:,} bytes)" if self.swap_outs else ""
        return (
            f"EngineStats: {self.preemptions} preemptions ({self.recomputed_tokens} tokens recomputed{swapped}), "
            f"{self.prefix_hit_tokens} prompt tokens from the prefix cache, "
            f"{self.accepted_tokens}/{self.draft_tokens} draft tokens accepted ({self.acceptance_rate:.0%})"
        )


def make_kv_cache(model: TinyLM, config: EngineConfig) -> KVCache:
    cfg = model.config
    shape = (cfg.num_layers, cfg.kv_heads, cfg.head_dim)
    if config.kv_layout == "paged":
        return PagedAllocator(
            *shape, config.num_blocks, config.block_size, model.dtype, model.device, config.enable_prefix_caching
        )
    return DenseKVCache(*shape, config.num_slots, model.dtype, model.device)


def make_host_pool(model: TinyLM, config: EngineConfig) -> HostKVPool | None:
    """The host pool that swap preemption parks K/V in (pinned when the engine runs on a GPU)."""
    if config.preemption != "swap":
        return None
    cfg = model.config
    pin = torch.device(config.device).type == "cuda"
    return HostKVPool(
        cfg.num_layers, cfg.kv_heads, cfg.head_dim, config.num_host_blocks, config.block_size, model.dtype, pin
    )


def make_proposer(config: EngineConfig, draft_model: TinyLM | None):
    if config.speculative == "ngram":
        return PromptLookupProposer(config.ngram_size)
    if config.speculative == "draft":
        if draft_model is None:
            raise ConfigError("speculative='draft' needs Engine(..., draft_model=a smaller TinyLM)")
        return DraftModelProposer(draft_model)
    return None


class Engine:
    """Continuous batching over a :class:`TinyLM`: requests join and leave at token boundaries."""

    def __init__(
        self,
        model: TinyLM,
        config: EngineConfig | None = None,
        plugins: Iterable = (),
        draft_model: TinyLM | None = None,
    ) -> None:
        if not isinstance(model, TinyLM):
            raise ConfigError(f"Engine needs a TinyLM (TinyLM.from_hf loads a Hugging Face Llama), got {model!r}")
        if config is not None and not isinstance(config, EngineConfig):
            raise ConfigError(f"Engine config must be an EngineConfig, got {config!r}")
        self.config = config or EngineConfig()
        try:
            device = torch.device(self.config.device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"EngineConfig.device={self.config.device!r} is not a torch device (cpu, cuda)") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"EngineConfig.device={self.config.device!r} but no CUDA device is available here")
        if draft_model is not None and not isinstance(draft_model, TinyLM):
            raise ConfigError(f"draft_model must be a TinyLM, got {draft_model!r}")
        self.proposer = make_proposer(self.config, draft_model)
        if draft_model is not None and draft_model.config.vocab_size != model.config.vocab_size:
            raise ConfigError(
                f"draft model vocab {draft_model.config.vocab_size} != target vocab {model.config.vocab_size}"
            )
        # A draft model with a shorter context than a request needs is not an error: near and past its
        # max_position it proposes fewer tokens, then none, and the request decodes one token per step.
        self.draft_window = draft_model.config.max_position if self.config.speculative == "draft" else None
        self.stats = EngineStats()
        self.model = model.to(self.config.device)
        self.scheduler = Scheduler(
            self.config.max_tokens_per_step, self.config.prefill_chunk_size, self.config.max_running, self.config.policy
        )
        self.budget = self.config.max_tokens_per_step  # SchedulerPlugins may change it between steps
        self.kv = make_kv_cache(self.model, self.config)
        self.swap = make_host_pool(self.model, self.config)
        self.requests: dict[int, Request] = {}
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.records: list[StepRecord] = []
        self.plugins: list = []
        self._attention_chain = None  # AttentionPlugins wrapped around the default, set on the model per forward
        self._next_id = 0
        self._arrivals = 0
        self.adapters: dict = {}  # LoRA adapters by name (add_adapter); rows are routed per request
        self._lora = None  # cblab_teach.advanced.lora's per-step router, once an adapter is added
        for p in plugins:
            self.add_plugin(p)

    # -- requests -----------------------------------------------------------------
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
        rid = self._next_id if request_id is None else request_id
        prompt = self._validate(prompt_ids, max_new_tokens, rid, sampling, priority)
        if adapter is not None and (not isinstance(adapter, str) or adapter not in self.adapters):
            raise UnknownAdapterError(
                f"request {rid}: unknown adapter {adapter!r}; known: {sorted(self.adapters)} (add_adapter first)"
            )
        req = Request(
            request_id=rid,
            prompt_ids=prompt,
            max_new_tokens=max_new_tokens,
            sampling=sampling or SamplingParams(),
            eos_token_id=self.config.eos_token_id if eos_token_id is None else eos_token_id,
            priority=priority,
            arrival=self._arrivals,
            adapter=adapter,
        )
        req.arrival_time = time.perf_counter()
        req.arrival_step = len(self.records)
        self._arrivals += 1
        self._next_id = max(self._next_id, rid + 1) if isinstance(rid, int) else self._next_id
        self.requests[rid] = req
        self.waiting.append(req)
        return rid

    def add_request_group(
        self,
        prompt_ids: Sequence[int],
        n: int,
        max_new_tokens: int = 16,
        sampling: SamplingParams | None = None,
        priority: int = 0,
        eos_token_id: int | None = None,
    ) -> list[int]:
        """``n`` samples of one prompt (parallel sampling), computing the prompt once.

        Sequence ``i`` samples with seed ``sampling.seed + i``, so its tokens equal those of
        ``add_request(prompt_ids, sampling=replace(sampling, seed=seed + i))`` alone. On a paged pool the
        first sequence prefills the prompt; at its first sample the others fork from it, sharing its
        blocks by reference, and a shared block is copied only when a sequence first writes into it
        (copy-on-write). On a dense pool the sequences are independent requests."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise RequestError(f"add_request_group: n must be an int >= 1, got {n!r}")
        most = min(self.config.max_running, self.config.max_tokens_per_step)
        if n > most:
            raise RequestError(
                f"add_request_group: n={n} sequences cannot run together: at most min(max_running, "
                f"max_tokens_per_step) = {most}"
            )
        base = sampling or SamplingParams()
        prompt = self._validate(prompt_ids, max_new_tokens, self._next_id, base, priority)  # before using base
        params = [replace(base, seed=base.seed + i) for i in range(n)]
        paged = isinstance(self.kv, PagedAllocator)
        if paged and not self.config.preemption:
            need = self.kv.blocks_for(len(prompt) + max_new_tokens - 1) * n
            if need > self.kv.num_blocks:
                raise CapacityError(
                    f"a group of {n} needs up to {need} KV blocks reserved but the whole pool has {self.kv.num_blocks}"
                )
        ids = [self.add_request(prompt, max_new_tokens, None, p, priority, eos_token_id) for p in params]
        if paged:
            parent = self.requests[ids[0]]
            parent.group_size, parent.forks = n, ids[1:]
            for rid in ids[1:]:  # they join at the fork, not through admission
                self.waiting.remove(self.requests[rid])
        return ids

    def _validate(self, prompt_ids, max_new_tokens, rid, sampling, priority) -> list[int]:
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise RequestError(f"request_id must be an int, got {rid!r}")
        if rid in self.requests:
            raise DuplicateRequestError(f"request id {rid} is already in use")
        prompt = token_ids(prompt_ids, f"request {rid}")
        if not prompt:
            raise RequestError(f"request {rid}: the prompt is empty; give at least one token id")
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"request {rid}: token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise RequestError(f"request {rid}: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        total = len(prompt) + max_new_tokens
        if total > self.model.config.max_position:
            raise RequestError(
                f"request {rid}: prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds "
                f"the model's max_position {self.model.config.max_position}"
            )
        if total - 1 > self.kv.num_slots:  # a paged pool's slots are its blocks times their size: the same test
            raise CapacityError(
                f"request {rid} needs {total - 1} KV slots but the whole pool has {self.kv.num_slots}; "
                "it could never run"
            )
        if not isinstance(priority, numbers.Integral) or isinstance(priority, bool):
            raise RequestError(f"request {rid}: priority must be an int (smaller runs first), got {priority!r}")
        if sampling is not None and not _valid_sampling(sampling):
            raise RequestError(
                f"request {rid}: invalid sampling parameters {sampling!r} (need a SamplingParams with a finite "
                "temperature >= 0, an int top_k >= 0 and 0 < top_p <= 1)"
            )
        return prompt

    def request(self, request_id: int) -> Request:
        try:
            return self.requests[request_id]
        except KeyError:
            raise UnknownRequestError(f"unknown request id {request_id!r}") from None

    def output(self, request_id: int) -> list[int]:
        """The ids generated so far for a request."""
        return list(self.request(request_id).output_ids)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)  # a group's forks wait on their parent, which is here

    # -- LoRA adapters and prefill/decode hand-over (cblab_teach.advanced.lora, core/kv_transfer.py) --------
    def add_adapter(self, name: str, adapter) -> None:
        """Serve ``add_request(..., adapter=name)`` with this LoRA adapter, batched with every other request."""
        from ..advanced.lora import register_adapter

        register_adapter(self, name, adapter)

    def export_prefilled(self, request_id: int) -> PrefilledRequest:
        """Hand a request with its first token to another engine: its state and K/V; freed and forgotten here."""
        return kv_transfer.export_prefilled(self, request_id)

    def can_import(self, handoff: PrefilledRequest) -> bool:
        return kv_transfer.can_import(self, handoff)

    def import_prefilled(self, handoff: PrefilledRequest) -> int:
        """Continue a request another engine prefilled: its K/V is written here and it decodes next step."""
        return kv_transfer.import_prefilled(self, handoff)

    # -- plugins ------------------------------------------------------------------
    def add_plugin(self, plugin) -> None:
        from ..plugins.base import AttentionPlugin, CachePlugin, SchedulerPlugin

        if not isinstance(plugin, (SchedulerPlugin, AttentionPlugin, CachePlugin)):
            raise PluginError(f"{plugin!r} is not a SchedulerPlugin, AttentionPlugin or CachePlugin")
        self.plugins.append(plugin)
        if isinstance(plugin, CachePlugin):
            self.kv.plugins.append(_Guarded(plugin))
        if isinstance(plugin, AttentionPlugin):
            self._install_attention_chain()

    def _install_attention_chain(self) -> None:
        from ..plugins.base import AttentionPlugin

        chain = self.model.attend_cached
        for plugin in (p for p in self.plugins if isinstance(p, AttentionPlugin)):
            chain = _attention_link(plugin, chain)
        self._attention_chain = chain

    def _fire(self, hook: str, *args) -> None:
        from ..plugins.base import SchedulerPlugin

        for plugin in self.plugins:
            if isinstance(plugin, SchedulerPlugin):
                _call(plugin, hook, self, *args)

    # -- the loop -------------------------------------------------------------------
    def step(self) -> StepRecord:
        """Run one step: plan, one forward over the mixed batch, sample, commit."""
        start = time.perf_counter()
        self._fire("before_step")
        if not isinstance(self.budget, numbers.Integral) or isinstance(self.budget, bool) or self.budget < 1:
            raise ConfigError(f"engine.budget must be an int >= 1, got {self.budget!r} (set by a plugin?)")
        if not self.has_unfinished():
            raise CBLabError("nothing to run: every request has finished; add_request() first")
        plan = self.scheduler.plan(
            self.running, self.waiting, self.kv, self.budget, self.config.preemption, self._propose()
        )
        if not plan.chunks and self.has_unfinished():
            raise CBLabError(f"the scheduler made no progress (budget={self.budget}); nothing can run")
        swapped = self._preempt(plan.preempted)
        self._admit(plan)
        copied = {}
        for c in plan.chunks:
            if blocks := self.kv.copy_on_write(c.request_id, c.start, c.end):  # shared blocks it will write into
                copied[c.request_id] = blocks
                self.stats.cow_copies += len(blocks)
            self.kv.ensure(c.request_id, c.end)
        batch = build_batch(plan, self.requests, self.model.device)
        fwd_start = time.perf_counter()
        self.model.attention_hook = self._attention_chain  # the model may be shared: hooks are this engine's only
        if self._lora is not None:
            self._lora.begin(batch, self.requests)  # each row's adapter, for this forward only
        try:
            logits = self.model(
                batch, self.kv, impl=self.config.attention, via_flatten=self.config.kv_read == "flatten"
            )
        finally:
            self.model.attention_hook = None
            if self._lora is not None:
                self._lora.end()
        new_tokens = self._sample(plan, logits)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        forward_s = time.perf_counter() - fwd_start
        forked = {c.request_id: self.requests[c.request_id].forks for c in plan.chunks
                  if self.requests[c.request_id].forks and c.request_id in new_tokens}
        finished = self._commit(plan, new_tokens)
        record = StepRecord(
            step=len(self.records),
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
        for req in finished:
            self._fire("on_request_completion", req)
        self._fire("after_step", record)
        record.duration_s = time.perf_counter() - start
        return record

    def _propose(self) -> dict[int, list[int]]:
        """Speculative guesses for decoding requests, never past their max_new_tokens (nor the draft's
        max_position). Greedy requests keep the agreeing guesses; sampled ones verify them by rejection sampling."""
        if self.proposer is None:
            return {}
        reqs = [r for r in self.running if is_decoding(r)]
        room = [min(self.config.num_speculative_tokens, r.max_new_tokens - len(r.output_ids) - 1) for r in reqs]
        if self.draft_window is not None:  # the draft model must hold the request's tokens plus its guesses
            room = [min(n, self.draft_window - r.num_tokens) for r, n in zip(reqs, room)]
        return self.proposer.propose(reqs, room)

    def _preempt(self, request_ids: list[int]) -> list[int]:
        """Free a request's KV and send it back to the queue: its K/V parked in the host pool (swap, if it has
        room), or recomputed from its tokens later. A swapped request keeps ``num_computed``. Returns the swapped."""
        swapped = []
        for rid in request_ids:
            req = self.requests[rid]
            if self._can_swap(req):
                self.stats.swapped_out_bytes += self.swap.swap_out(self.kv, rid, req.num_computed)
                self.stats.swap_outs += 1
                swapped.append(rid)
            else:
                self.stats.recomputed_tokens += req.num_computed
                req.num_computed = 0
            self.kv.free(rid)
            self.running.remove(req)
            self.stats.preemptions += 1
            req.num_preemptions += 1
            req.state = RequestState.WAITING
            self.waiting.append(req)
        return swapped

    def _can_swap(self, req: Request) -> bool:
        plain_pool = isinstance(self.kv.k, torch.Tensor)  # an int8 pool (KVQuantizationPlugin) is recomputed
        return self.swap is not None and plain_pool and req.num_computed > 0 and self.swap.can_hold(req.num_computed)

    def _admit(self, plan: StepPlan) -> None:
        for rid in plan.admitted:
            req = self.requests[rid]
            group = {"copies": req.group_size} if req.group_size > 1 else {}  # reserve for every fork
            self.kv.admit(rid, req.max_total_tokens, reserve=not self.config.preemption, **group)
            if self.swap is not None and self.swap.holds(rid):  # resume exactly where it stopped
                tokens, nbytes = self.swap.swap_in(self.kv, rid)
                assert tokens == req.num_computed, "a swapped request's K/V and its tokens disagree"
                self.stats.swapped_in_bytes += nbytes
            elif self.config.enable_prefix_caching:
                req.num_computed = self.kv.claim_prefix(rid, req.all_ids)
                self.stats.prefix_hit_tokens += req.num_computed
                assert req.num_computed == plan.cached_tokens.get(rid, 0), "prefix cache changed since planning"
            self.waiting.remove(req)
            self.running.append(req)
            req.state = RequestState.PREFILL

    def _sample(self, plan: StepPlan, logits: torch.Tensor) -> dict[int, list[int]]:
        """Tokens each request gains: one sample, or the verified prefix of its drafts plus one."""
        greedy = logits.argmax(dim=-1).tolist()
        out: dict[int, list[int]] = {}
        row = 0

        def draw(r: Request) -> int:  # the next token of ``r`` from this row: argmax, or sampled at its position
            return greedy[row] if r.sampling.greedy else sample_token(logits[row], r, r.num_tokens)

        for c in plan.chunks:
            if not c.num_logits:
                continue
            req = self.requests[c.request_id]
            if c.drafts:  # greedy: the agreeing prefix; sampled: rejection sampling keeps the target's distribution
                rows = slice(row, row + c.num_logits)
                out[c.request_id] = (
                    accept_drafts(greedy[rows], c.drafts)
                    if req.sampling.greedy
                    else verify_sampled(logits[rows], c.drafts, req, req.num_tokens)
                )
                self.stats.draft_tokens += len(c.drafts)
                self.stats.accepted_tokens += len(out[c.request_id]) - 1
            else:
                out[c.request_id] = [draw(req)]
            for fid in req.forks:  # parallel sampling: each fork draws its first token from the same row
                out[fid] = [draw(self.requests[fid])]
            row += c.num_logits
        return out

    def _commit(self, plan: StepPlan, new_tokens: dict[int, list[int]]) -> list[Request]:
        step = len(self.records)
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
                finished += self._fork(req, new_tokens, now)
            if req.is_finished:
                finished.append(req)
                self.kv.free(req.request_id)
                self.running.remove(req)
        return finished

    def _fork(self, parent: Request, new_tokens: dict[int, list[int]], now: float) -> list[Request]:
        """The parent just sampled its first token: its forks join, sharing its blocks; returns those done."""
        done = []
        for fid in parent.forks:
            fork = self.requests[fid]
            self.kv.fork(parent.request_id, fid, fork.max_total_tokens, reserve=not self.config.preemption)
            fork.num_computed = parent.num_computed
            fork.last_scheduled_step = parent.last_scheduled_step
            fork.append_token(new_tokens[fid][0])
            fork.token_times.append(now)
            if fork.is_finished:
                done.append(fork)
                self.kv.free(fid)
            else:
                self.running.append(fork)
        parent.forks = []
        return done

    def run(self, progress: bool = False) -> list[StepRecord]:
        """Step until every request has finished; returns this run's records."""
        first = len(self.records)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self.waiting) + len(self.running), desc="requests", unit="req")
        while self.has_unfinished():
            record = self.step()
            if bar is not None:
                bar.update(len(record.finished))
        if bar is not None:
            bar.close()
        return self.records[first:]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int] = 16,
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
        progress: bool = False,
    ) -> list[list[int]]:
        """Serve all prompts together; generated ids in input order."""
        n = len(prompts)
        lengths = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        params = sampling if isinstance(sampling, (list, tuple)) else [sampling] * n
        if len(lengths) != n or len(params) != n:
            raise RequestError(f"got {n} prompts but {len(lengths)} max_new_tokens and {len(params)} sampling params")
        ids = [self.add_request(p, m, sampling=s) for p, m, s in zip(prompts, lengths, params)]
        self.run(progress=progress)
        return [self.output(i) for i in ids]


def _valid_sampling(s) -> bool:
    """Checked when a request arrives: a bad value found mid-step would stop every request."""
    if not isinstance(s, SamplingParams):
        return False
    numbers_ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (s.temperature, s.top_p))
    if not numbers_ok or not isinstance(s.top_k, int) or isinstance(s.top_k, bool):
        return False
    return math.isfinite(s.temperature) and s.temperature >= 0 and s.top_k >= 0 and 0 < s.top_p <= 1


class _Guarded:
    """Wrap a CachePlugin so an exception names the plugin and the hook."""

    def __init__(self, plugin) -> None:
        self.plugin = plugin

    def before_append(self, layer, k, v, *rest):
        out = _call(self.plugin, "before_append", layer, k, v, *rest)
        if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise PluginError(
                f"plugin {self.plugin.name}.before_append() must return the (k, v) to store, got {out!r}"
                " (an observer returns them unchanged: return k, v)"
            )
        if out[0].shape != k.shape or out[1].shape != v.shape:
            raise PluginError(
                f"plugin {self.plugin.name}.before_append() changed the K/V shapes {tuple(k.shape)}, "
                f"{tuple(v.shape)} to {tuple(out[0].shape)}, {tuple(out[1].shape)}"
            )
        return out

    def after_append(self, *args):
        return _call(self.plugin, "after_append", *args)


def _call(plugin, hook: str, *args):
    try:
        return getattr(plugin, hook)(*args)
    except CBLabError:
        raise
    except Exception as e:
        raise PluginError(f"plugin {plugin.name}.{hook}() raised {type(e).__name__}: {e}") from e


def _attention_link(plugin, inner):
    def attend(layer, q, ctx):
        return _call(plugin, "attend", layer, q, ctx, inner)

    return attend
