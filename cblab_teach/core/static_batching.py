"""The baseline continuous batching is measured against: static batching.

Requests are served in fixed batches of ``batch_size`` in arrival order. Each
batch is padded to its longest prompt and computed in one prefill step, then
decodes every row every step until its *longest* member finishes: rows that
finished early keep computing padding. Nobody joins a batch in flight.

It runs the same :class:`TinyLM` and the same ragged forward, so the padding
is real computed work, and outputs equal running each request alone (padding
sits after each row's real tokens and is never attended to).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..errors import ConfigError, RequestError
from ..model.tiny_lm import TinyLM
from .batch_builder import RaggedBatch
from .intake import check_max_new_tokens, check_sampling, generate_args
from .kv_cache import DenseKVCache
from .records import StepRecord
from .request import SamplingParams, token_ids
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
        q_len = torch.full((rows,), width, dtype=torch.long)
        start_t = torch.tensor(starts, dtype=torch.long)
        seq_ids = torch.repeat_interleave(torch.arange(rows), q_len)
        positions = start_t[seq_ids] + torch.arange(rows * width) % width
        # keys: in prefill a row attends only to its real prompt tokens' positions (causal mask does it);
        # in decode, to its real tokens plus its own earlier (padding) outputs
        context = start_t + q_len
        key_seq = torch.repeat_interleave(torch.arange(rows), context)
        key_pos = torch.cat([torch.arange(int(c)) for c in context])
        cu = torch.zeros(rows + 1, dtype=torch.long)
        cu[1:] = torch.cumsum(q_len, 0)
        sample_rows = cu[:-1] + torch.tensor(sample_offsets)
        batch = RaggedBatch(
            request_ids=ids,
            token_ids=torch.tensor([t for row in tokens for t in row], dtype=torch.long),
            positions=positions,
            seq_ids=seq_ids,
            cu_seqlens=cu,
            cached_lens=start_t,
            context_lens=context,
            key_seq_ids=key_seq,
            key_positions=key_pos,
            sample_rows=sample_rows,
            sample_request_ids=list(ids),
        ).to(self.model.device)
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
