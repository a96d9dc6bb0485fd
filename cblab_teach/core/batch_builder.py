"""Turn a plan into one ragged batch: no padding between requests.

The step's tokens from every request are concatenated into one row. Each
query token attends to its own request's keys: the cached prefix plus this
step's new keys up to its own position. That is the ragged causal mask::

    mask[i, j] = seq(i) == seq(j) and pos(j) <= pos(i)

over the step's queries ``i`` and every key ``j`` of the requests in the batch.
Everything below is built with tensor ops, never a Python double loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .request import Request
from .scheduler import StepPlan


@dataclass
class RaggedBatch:
    request_ids: list[int]  # B requests, in plan order
    token_ids: torch.Tensor  # [N] this step's tokens, concatenated
    positions: torch.Tensor  # [N] position of each token in its own request
    seq_ids: torch.Tensor  # [N] index 0..B-1 of each token's request
    cu_seqlens: torch.Tensor  # [B + 1] query offsets: request b owns tokens cu[b]:cu[b+1]
    cached_lens: torch.Tensor  # [B] keys already in the KV cache before this step
    context_lens: torch.Tensor  # [B] cached + new: keys each request attends to
    key_seq_ids: torch.Tensor  # [M] request index of every key
    key_positions: torch.Tensor  # [M] position of every key
    sample_rows: torch.Tensor  # [S] rows whose logits are needed (a chunk's last row; every row of a draft chunk)
    sample_request_ids: list[int]  # [S] owner of each of those rows

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def num_keys(self) -> int:
        return int(self.key_positions.numel())

    @property
    def query_lens(self) -> torch.Tensor:
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    def to(self, device: str | torch.device) -> RaggedBatch:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return RaggedBatch(**moved)


def ragged_causal_mask(
    seq_ids: torch.Tensor, positions: torch.Tensor, key_seq_ids: torch.Tensor, key_positions: torch.Tensor
) -> torch.Tensor:
    """``[N, M]`` bool: query i may read key j iff same request and key not in its future."""
    same_request = seq_ids[:, None] == key_seq_ids[None, :]
    not_future = key_positions[None, :] <= positions[:, None]
    return same_request & not_future


def batch_mask(batch: RaggedBatch) -> torch.Tensor:
    return ragged_causal_mask(batch.seq_ids, batch.positions, batch.key_seq_ids, batch.key_positions)


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``arange(s, s + n)`` for every pair, and say which pair each value came from."""
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    offsets = torch.cumsum(lengths, 0) - lengths
    return starts[owner] + torch.arange(int(lengths.sum())) - offsets[owner], owner


@dataclass
class PlanLayout:
    """Where every query and key of a plan sits; needs no token ids, so a notebook can draw it."""

    positions: torch.Tensor  # [N]
    seq_ids: torch.Tensor  # [N]
    key_positions: torch.Tensor  # [M]
    key_seq_ids: torch.Tensor  # [M]
    cu_seqlens: torch.Tensor  # [B + 1]
    cached_lens: torch.Tensor  # [B]
    context_lens: torch.Tensor  # [B]

    @property
    def mask(self) -> torch.Tensor:
        return ragged_causal_mask(self.seq_ids, self.positions, self.key_seq_ids, self.key_positions)

    @property
    def key_is_cached(self) -> torch.Tensor:
        """[M] True for keys stored before this step (the cached prefix), False for this step's."""
        return self.key_positions < self.cached_lens[self.key_seq_ids]


def plan_layout(plan: StepPlan) -> PlanLayout:
    """Positions and request indices of a plan's queries and keys."""
    starts = torch.tensor([c.start for c in plan.chunks], dtype=torch.long)
    lengths = torch.tensor([c.length for c in plan.chunks], dtype=torch.long)
    context = starts + lengths
    positions, seq_ids = _ranges(starts, lengths)
    key_positions, key_seq_ids = _ranges(torch.zeros_like(context), context)
    cu = torch.zeros(len(plan.chunks) + 1, dtype=torch.long)
    cu[1:] = torch.cumsum(lengths, 0)
    return PlanLayout(positions, seq_ids, key_positions, key_seq_ids, cu, starts, context)


def build_batch(plan: StepPlan, requests: Mapping[int, Request], device: str | torch.device = "cpu") -> RaggedBatch:
    """Concatenate the plan's chunks into one :class:`RaggedBatch`."""
    chunks = plan.chunks
    token_ids: list[int] = []
    sample_rows: list[int] = []
    end = 0  # running row count, kept in Python: reading it back from cu_seqlens costs a tensor read per chunk
    for c in chunks:
        token_ids.extend(requests[c.request_id].token_slice(c.start, c.end - len(c.drafts)))
        token_ids.extend(c.drafts)  # speculative tokens: verified by this very forward
        end += c.length
        sample_rows.extend(range(end - c.num_logits, end))
    lay = plan_layout(plan)
    batch = RaggedBatch(
        request_ids=[c.request_id for c in chunks],
        token_ids=torch.tensor(token_ids, dtype=torch.long),
        positions=lay.positions,
        seq_ids=lay.seq_ids,
        cu_seqlens=lay.cu_seqlens,
        cached_lens=lay.cached_lens,
        context_lens=lay.context_lens,
        key_seq_ids=lay.key_seq_ids,
        key_positions=lay.key_positions,
        sample_rows=torch.tensor(sample_rows, dtype=torch.long),
        sample_request_ids=[c.request_id for c in chunks for _ in range(c.num_logits)],
    )
    return batch if str(device) == "cpu" else batch.to(device)
