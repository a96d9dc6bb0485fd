"""The baseline continuous batching is measured against: static batching.

Requests are served in fixed batches of ``batch_size`` in arrival order. Each
batch is padded to its longest prompt and computed in one prefill step, then
decodes every row every step until its *longest* member finishes: rows that
finished early keep computing padding. Nobody joins a batch in flight.

It runs the same :class:`TinyLM` and the same ragged forward, so the padding
is real computed work, and outputs equal running each request alone (padding
sits after each row's real tokens and is never attended to).

:class:`StaticBatchingEngine` runs a known list of prompts to the end
(``generate``); :class:`StaticServingEngine` is the same batching driven one
step at a time while requests keep arriving, as the server drives it
(``python -m cblab_teach serve --static``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import torch

from ..errors import CBLabError, ConfigError, RequestError
from ..model.tiny_lm import TinyLM
from .batch_builder import RaggedBatch
from .config import EngineConfig
from .forking import group_params
from .intake import Intake, check_max_new_tokens, check_sampling, generate_args, is_int
from .kv_cache import DenseKVCache
from .records import StepRecord
from .request import Request, RequestState, SamplingParams, token_ids
from .request_table import RequestTable
from .sampling import sample_token
from .scheduler import ScheduledChunk, StepPlan


class StaticBatchingEngine:
    """Fixed, padded batches; a batch runs until its longest member finishes."""

    def __init__(self, model: TinyLM, batch_size: int = 8, pad_token_id: int = 0) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.model = model
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.records: list[StepRecord] = []
        self.arrival_time = 0.0

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int] = 16,
        sampling: SamplingParams | None = None,
        progress: bool = False,
    ) -> list[list[int]]:
        if sampling is not None and not check_sampling(sampling, "StaticBatchingEngine").greedy:
            raise ConfigError("StaticBatchingEngine is greedy only")
        prompts, lengths, _ = generate_args(prompts, max_new_tokens, None)
        prompts = [token_ids(p, f"prompt {i}") for i, p in enumerate(prompts)]
        lengths = [check_max_new_tokens(m, f"prompt {i}") for i, m in enumerate(lengths)]
        for i, p in enumerate(prompts):
            if not p:
                raise RequestError(f"prompt {i} is empty; give at least one token id")
            bad = [t for t in p if not 0 <= t < self.model.config.vocab_size]
            if bad:
                raise RequestError(f"prompt {i}: token ids {bad[:5]} are outside the vocabulary")
        self.arrival_time = time.perf_counter()
        starts = range(0, len(prompts), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="static batches")
        outputs: list[list[int]] = []
        for s in starts:
            outputs += self._run_batch(
                [list(p) for p in prompts[s : s + self.batch_size]], lengths[s : s + self.batch_size], s
            )
        return outputs

    def _run_batch(self, prompts: list[list[int]], max_new: list[int], first_id: int) -> list[list[int]]:
        cfg = self.model.config
        rows = len(prompts)
        width = max(len(p) for p in prompts)
        steps = max(max_new)
        cache = DenseKVCache(
            cfg.num_layers, cfg.kv_heads, cfg.head_dim, rows * (width + steps), self.model.dtype, self.model.device
        )
        ids = list(range(first_id, first_id + rows))
        for rid in ids:
            cache.admit(rid, width + steps)
            cache.ensure(rid, width)
        outputs: list[list[int]] = [[] for _ in range(rows)]
        # prefill: every row padded to the longest prompt, logits at each row's real last token
        tokens = [p + [self.pad_token_id] * (width - len(p)) for p in prompts]
        last = [len(p) - 1 for p in prompts]
        lengths = [len(p) for p in prompts]
        self._step(ids, tokens, [0] * rows, last, outputs, max_new, "prefill", width, cache, sum(lengths))
        for t in range(1, steps):
            feed = [[out[-1] if len(out) < m else self.pad_token_id] for out, m in zip(outputs, max_new)]
            starts = [lengths[i] + t - 1 for i in range(rows)]
            for rid, s in zip(ids, starts):
                cache.ensure(rid, s + 1)
            active = sum(len(out) < m for out, m in zip(outputs, max_new))
            self._step(ids, feed, starts, [0] * rows, outputs, max_new, "decode", 1, cache, active)
        return outputs

    def _step(self, ids, tokens, starts, sample_offsets, outputs, max_new, kind, width, cache, useful):
        """One padded forward over every row of the batch (finished rows included)."""
        start = time.perf_counter()
        rows = len(ids)
        batch = padded_batch(ids, tokens, starts, sample_offsets).to(self.model.device)
        fwd = time.perf_counter()
        logits = self.model(batch, cache)
        best = logits.argmax(-1).tolist()
        forward_s = time.perf_counter() - fwd
        sampled, finished = {}, []
        for i, (out, m) in enumerate(zip(outputs, max_new)):
            if len(out) < m:
                out.append(best[i])
                sampled[ids[i]] = best[i]
                if len(out) == m:
                    finished.append(ids[i])
        plan = StepPlan(budget=rows * width)
        plan.chunks = [ScheduledChunk(r, s, width, kind, True) for r, s in zip(ids, starts)]
        self.records.append(
            StepRecord(
                step=len(self.records),
                plan=plan,
                sampled=sampled,
                finished=finished,
                running=[r for r, out, m in zip(ids, outputs, max_new) if len(out) < m],
                waiting=[],
                kv=cache.usage(),
                block_tables={},
                start_time=start,
                duration_s=time.perf_counter() - start,
                forward_s=forward_s,
                extra={"padding_tokens": rows * width - useful, "useful_tokens": useful},
            )
        )


def padded_batch(ids: list[int], tokens: list[list[int]], starts: list[int], sample_offsets: list[int]) -> RaggedBatch:
    """Rows of one width as a ragged batch: row ``i`` computes ``tokens[i]`` at positions ``starts[i]`` on and
    samples at ``sample_offsets[i]`` within the row.

    Keys: in prefill a row attends only to its real prompt tokens' positions (the causal mask does it); in decode,
    to its real tokens plus its own earlier (padding) outputs. Padding after a row's real tokens is computed work
    that no real token ever attends to, so each row's answer equals the request run alone."""
    rows, width = len(ids), len(tokens[0])
    q_len = torch.full((rows,), width, dtype=torch.long)
    start_t = torch.tensor(starts, dtype=torch.long)
    seq_ids = torch.repeat_interleave(torch.arange(rows), q_len)
    positions = start_t[seq_ids] + torch.arange(rows * width) % width
    context = start_t + q_len
    key_seq = torch.repeat_interleave(torch.arange(rows), context)
    key_pos = torch.cat([torch.arange(int(c)) for c in context])
    cu = torch.zeros(rows + 1, dtype=torch.long)
    cu[1:] = torch.cumsum(q_len, 0)
    return RaggedBatch(
        request_ids=list(ids),
        token_ids=torch.tensor([t for row in tokens for t in row], dtype=torch.long),
        positions=positions,
        seq_ids=seq_ids,
        cu_seqlens=cu,
        cached_lens=start_t,
        context_lens=context,
        key_seq_ids=key_seq,
        key_positions=key_pos,
        sample_rows=cu[:-1] + torch.tensor(sample_offsets),
        sample_request_ids=list(ids),
    )


class StaticServingEngine(RequestTable):
    """Static batching driven one step at a time, as a server drives an engine: ``serve --static``.

    Requests arrive whenever (:meth:`add_request`) and wait. When no group is running, a step admits up to
    ``batch_size`` waiting requests in arrival order (as many as the pool holds, each row reserved at the group's
    padded shape: its longest prompt plus its longest ``max_new_tokens``) and computes their prompts, padded to
    the longest, in one forward. Every later step decodes every row, rows that have ended computing padding,
    until the last row ends. Only then is the group's KV freed and the next group admitted: nobody joins a group
    in flight, and an ended row's memory is held until its group ends. That is what continuous batching removes.

    It has the public API the server's engine loop drives on :class:`~.engine.Engine` (``check_request``,
    ``add_request``, ``add_request_group``, ``step``, ``abort``, ``finish``, ``request``, ``forget``,
    ``has_unfinished``, ``waiting``, ``running``, ``kv``, ``records``), so the server is the same code over either.
    Tokens are drawn as the engine draws them (``core/sampling.py``: greedy, or keyed by seed and position), so
    every answer equals the request run alone.
    """

    def __init__(
        self,
        model: TinyLM,
        batch_size: int = 8,
        num_slots: int | None = None,
        pad_token_id: int = 0,
        eos_token_id: int | None = None,
        keep_records: int | None = None,
    ) -> None:
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        defaults = EngineConfig()
        num_slots = defaults.num_blocks * defaults.block_size if num_slots is None else num_slots
        if not is_int(num_slots) or num_slots < 1:
            raise ConfigError(f"num_slots must be an int >= 1 (KV slots in the pool), got {num_slots!r}")
        if keep_records is not None and (not is_int(keep_records) or keep_records < 1):
            raise ConfigError(f"keep_records must be None or an int >= 1, got {keep_records!r}")
        cfg = model.config
        if not is_int(pad_token_id) or not 0 <= pad_token_id < cfg.vocab_size:
            raise ConfigError(f"pad_token_id must be a token id in [0, {cfg.vocab_size}), got {pad_token_id!r}")
        self.model, self.batch_size, self.pad_token_id = model, int(batch_size), pad_token_id
        self.kv = DenseKVCache(cfg.num_layers, cfg.kv_heads, cfg.head_dim, int(num_slots), model.dtype, model.device)
        self.intake = Intake(cfg.vocab_size, cfg.max_position, self.kv.num_slots, eos_token_id)
        self.requests: dict[int, Request] = {}
        self.waiting: list[Request] = []
        self.group: list[Request] = []  # the rows of the group in flight, ended ones included; [] between groups
        self.group_steps = 0  # steps the group in flight has taken
        self.records: list[StepRecord] | deque[StepRecord] = [] if keep_records is None else deque(maxlen=keep_records)
        self.num_steps = 0

    # -- requests -------------------------------------------------------------------------------------------
    def check_request(self, prompt_ids: Sequence[int], max_new_tokens: int = 16, **options) -> Request:
        """The request ``add_request`` would queue, checked; a typed error otherwise. Changes nothing."""
        return self.intake.check(self.requests, prompt_ids, max_new_tokens, **options)

    def add_request(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int = 16,
        request_id: int | None = None,
        sampling: SamplingParams | None = None,
        eos_token_id: int | None = None,
    ) -> int:
        """Queue a request: it waits for the next group (never joins the one in flight)."""
        req = self.check_request(prompt_ids, max_new_tokens, request_id=request_id, sampling=sampling,
                                 eos_token_id=eos_token_id)  # fmt: skip
        self.intake.enter(req)
        req.arrival_time = time.perf_counter()
        req.arrival_step = self.num_steps
        self.requests[req.request_id] = req
        self.waiting.append(req)
        return req.request_id

    def add_request_group(
        self,
        prompt_ids: Sequence[int],
        n: int,
        max_new_tokens: int = 16,
        sampling: SamplingParams | None = None,
        eos_token_id: int | None = None,
    ) -> list[int]:
        """``n`` samples of one prompt, sample ``i`` seeded ``sampling.seed + i`` (as ``Engine.add_request_group``).
        Static batching shares no prompt KV: each sample is its own row."""
        if not is_int(n) or n < 1:
            raise RequestError(f"n must be an int >= 1 (samples of one prompt), got {n!r}")
        first = self.check_request(prompt_ids, max_new_tokens, sampling=sampling, eos_token_id=eos_token_id)
        return [self.add_request(first.prompt_ids, first.max_new_tokens, None, params, first.eos_token_id)
                for params in group_params(first.sampling, int(n))]  # fmt: skip

    def abort(self, request_id: int) -> None:
        """End a request now (its client went away). Waiting, it leaves the queue; in a group, its row computes
        padding until the group ends, and the group's KV is freed when its last row has ended."""
        self._end(self.request(request_id), aborted=True)

    def finish(self, request_id: int) -> None:
        """End a request now as done (its caller found a stop string); as :meth:`abort` otherwise."""
        self._end(self.request(request_id), aborted=False)

    def _end(self, req: Request, aborted: bool) -> None:
        if req.is_finished:
            return
        if req in self.waiting:
            self.waiting.remove(req)
        req.state, req.aborted, req.stopped = RequestState.FINISHED, aborted, not aborted
        self._close_group_if_done()

    @property
    def running(self) -> list[Request]:
        """The group's rows that have not ended."""
        return [r for r in self.group if not r.is_finished]

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- the loop -------------------------------------------------------------------------------------------
    def step(self) -> StepRecord:
        """Admit a group if none is in flight and prefill it, padded; else decode every row of the group."""
        start = time.perf_counter()
        if not self.has_unfinished():
            raise CBLabError("nothing to run: every request has finished; add_request() first")
        admitted = [] if self.group else self._admit_group()
        rows, t = self.group, self.group_steps
        if admitted:
            width = max(r.prompt_len for r in rows)
            tokens = [r.prompt_ids + [self.pad_token_id] * (width - r.prompt_len) for r in rows]
            starts, offsets, kind = [0] * len(rows), [r.prompt_len - 1 for r in rows], "prefill"
            useful = sum(r.prompt_len for r in rows)
        else:
            width, kind = 1, "decode"
            tokens = [[self.pad_token_id if r.is_finished else r.output_ids[-1]] for r in rows]
            starts, offsets = [r.prompt_len + t - 1 for r in rows], [0] * len(rows)
            useful = len(self.running)
        ids = [r.request_id for r in rows]
        for rid, s in zip(ids, starts):
            self.kv.ensure(rid, s + width)
        fwd = time.perf_counter()
        logits = self.model(padded_batch(ids, tokens, starts, offsets).to(self.model.device), self.kv)
        best = logits.argmax(-1).tolist()
        forward_s = time.perf_counter() - fwd
        now, sampled, finished = time.perf_counter(), {}, []
        for i, req in enumerate(rows):
            if req.is_finished:
                continue
            token = best[i] if req.sampling.greedy else sample_token(logits[i], req, req.num_tokens)
            req.append_token(token)
            req.token_times.append(now)
            req.num_computed = req.num_tokens - 1
            sampled[req.request_id] = token
            if req.is_finished:
                finished.append(req.request_id)
        self.group_steps += 1
        plan = StepPlan(budget=len(rows) * width, admitted=[r.request_id for r in admitted])
        plan.chunks = [ScheduledChunk(r, s, width, kind, True) for r, s in zip(ids, starts)]
        record = StepRecord(
            step=self.num_steps,
            plan=plan,
            sampled=sampled,
            new_tokens={rid: [tok] for rid, tok in sampled.items()},
            finished=finished,
            running=[r.request_id for r in self.running],
            waiting=[r.request_id for r in self.waiting],
            kv=self.kv.usage(),  # before a finished group's KV is freed: the step held it
            block_tables={},
            start_time=start,
            duration_s=0.0,
            forward_s=forward_s,
            extra={"padding_tokens": len(rows) * width - useful, "useful_tokens": useful},
        )
        self._close_group_if_done()
        self.records.append(record)
        self.num_steps += 1
        record.duration_s = time.perf_counter() - start
        return record

    def _admit_group(self) -> list[Request]:
        """The next group: waiting requests in arrival order, while the group is at most ``batch_size`` rows and
        its padded rows fit the pool (nobody skips ahead of a request that does not fit)."""
        group: list[Request] = []
        for req in self.waiting:
            rows = group + [req]
            row_slots = max(r.prompt_len for r in rows) + max(r.max_new_tokens for r in rows) - 1
            if len(rows) > self.batch_size or not self.kv.fits([row_slots] * len(rows)):
                break
            group = rows
        row_slots = max(r.prompt_len for r in group) + max(r.max_new_tokens for r in group) - 1
        for req in group:
            self.waiting.remove(req)
            self.kv.admit(req.request_id, row_slots)
            req.state = RequestState.PREFILL
        self.group, self.group_steps = group, 0
        return group

    def _close_group_if_done(self) -> None:
        if self.group and not self.running:
            for req in self.group:
                self.kv.free(req.request_id)
            self.group, self.group_steps = [], 0
