"""The ragged batch and its mask, checked against the definition written as a double loop."""

from __future__ import annotations

import torch

from cblab_teach import Request, build_batch, ragged_causal_mask
from cblab_teach.core.batch_builder import batch_mask
from cblab_teach.core.scheduler import ScheduledChunk, StepPlan


def test_layout_of_a_mixed_batch():
    reqs = {0: Request(0, [10, 11, 12, 13, 14], 3), 1: Request(1, [20, 21], 3)}
    reqs[1].output_ids, reqs[1].num_computed = [22], 2
    reqs[0].num_computed = 2
    plan = StepPlan(
        budget=8, chunks=[ScheduledChunk(1, 2, 1, "decode", True), ScheduledChunk(0, 2, 3, "prefill", True)]
    )
    b = build_batch(plan, reqs)
    assert b.token_ids.tolist() == [22, 12, 13, 14]
    assert b.positions.tolist() == [2, 2, 3, 4]
    assert b.seq_ids.tolist() == [0, 1, 1, 1]
    assert b.cu_seqlens.tolist() == [0, 1, 4]
    assert b.context_lens.tolist() == [3, 5]
    assert b.key_positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert b.sample_rows.tolist() == [0, 3] and b.sample_request_ids == [1, 0]
    mask = batch_mask(b)
    loop = torch.tensor(
        [
            [b.seq_ids[i] == b.key_seq_ids[j] and b.key_positions[j] <= b.positions[i] for j in range(b.num_keys)]
            for i in range(b.num_tokens)
        ]
    )
    assert torch.equal(mask, loop)


def test_prefill_only_mask_is_block_diagonal_causal():
    seq = torch.tensor([0, 0, 0, 1, 1])
    pos = torch.tensor([0, 1, 2, 0, 1])
    mask = ragged_causal_mask(seq, pos, seq, pos)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[:3, :3] = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    expected[3:, 3:] = torch.tril(torch.ones(2, 2, dtype=torch.bool))
    assert torch.equal(mask, expected)
