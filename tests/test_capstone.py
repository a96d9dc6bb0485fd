"""The capstone check passes the library's engine and the worked solution, and fails six classic engine bugs,
each with a message that points at the bug. Every engine runs on a tiny random Llama loaded from Hugging Face."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cblab_teach import Engine
from cblab_teach.attention.masked import leaky_clamp_attention, masked_attention
from cblab_teach.checks import PROJECTS, check
from cblab_teach.core.batch_builder import batch_mask
from cblab_teach.core.scheduler import ScheduledChunk, Scheduler, is_decoding

REPO = Path(__file__).resolve().parents[1]


class MaskedEngine(Engine):
    """The library's engine with its attention routed through ``self.mask(batch)``, so a test can break the mask."""

    def __init__(self, model, config):
        super().__init__(model, config)
        self._attention_chain = self._attend

    def _attend(self, layer, q, ctx):
        k, v = ctx.keys_values(layer)
        return masked_attention(q[None], k[None], v[None], self.mask(ctx.batch)[None])[0]

    def mask(self, batch):
        return batch_mask(batch)


class StrictMask(MaskedEngine):
    """``<`` instead of ``<=``: no query sees its own key."""

    def mask(self, batch):
        same = batch.seq_ids[:, None] == batch.key_seq_ids[None, :]
        return same & (batch.key_positions[None, :] < batch.positions[:, None])


class DecodeSkipsOwnKey(MaskedEngine):
    """A one-token query reads only the keys cached before this step, not the one it just wrote."""

    def mask(self, batch):
        single = (batch.query_lens[batch.seq_ids] == 1)[:, None]
        own = batch.key_positions[None, :] == batch.positions[:, None]
        return batch_mask(batch) & ~(single & own)


class PrefillFirstScheduler(Scheduler):
    def plan(self, running, waiting, kv=None, budget=None, preemption=False, drafts=None):
        decoders = [r for r in running if is_decoding(r)]
        plan = super().plan([r for r in running if not is_decoding(r)], waiting, kv, budget)
        for r in decoders[: plan.budget - plan.used]:
            plan.chunks.append(ScheduledChunk(r.request_id, r.num_computed, 1, "decode", True))
        return plan


class PrefillBeforeDecode(Engine):
    def __init__(self, model, config):
        super().__init__(model, config)
        self.scheduler = PrefillFirstScheduler(config.max_tokens_per_step, config.prefill_chunk_size)


class LastPromptTokenTwice(Engine):
    """The seed system's bug: the first decode feeds the last prompt token again instead of the sampled one."""

    def __init__(self, model, config):
        super().__init__(model, config)
        model.register_forward_pre_hook(self._feed_last_prompt_token_again)

    def _feed_last_prompt_token_again(self, module, args):
        batch = args[0]
        for row, (s, p) in enumerate(zip(batch.seq_ids.tolist(), batch.positions.tolist())):
            req = self.requests[batch.request_ids[s]]
            if p == req.prompt_len and int(batch.query_lens[s]) == 1:
                batch.token_ids[row] = req.prompt_ids[-1]


class NeverFrees(Engine):
    def _commit(self, plan, new_tokens):
        free, self.kv.free = self.kv.free, lambda request_id: None
        try:
            return super()._commit(plan, new_tokens)
        finally:
            self.kv.free = free


class BudgetOverrun(Engine):
    def __init__(self, model, config):
        super().__init__(model, config)
        self.budget = config.max_tokens_per_step + 1


class LeakyAttention(MaskedEngine):
    """Right batches and masks, wrong numerics (post-softmax clamp): the check says so."""

    def _attend(self, layer, q, ctx):
        k, v = ctx.keys_values(layer)
        return leaky_clamp_attention(q[None], k[None], v[None], self.mask(ctx.batch)[None], eps=1e-2)[0]


BUGS = [
    (StrictMask, "`<` instead of `<=`"),
    (PrefillBeforeDecode, "decode first"),
    (DecodeSkipsOwnKey, "decode query skips its own key"),
    (LastPromptTokenTwice, "last prompt token"),
    (NeverFrees, "blocks never freed"),
    (BudgetOverrun, "budget overrun"),
    (LeakyAttention, "after the mask"),
]


def test_the_library_engine_passes():
    result = check("capstone_engine", Engine, verbose=False)
    assert result, str(result)
    assert result.total >= 8


def test_an_engine_that_routes_attention_through_its_own_mask_passes():
    assert check("capstone_engine", MaskedEngine, verbose=False)


@pytest.mark.parametrize("engine,words", BUGS, ids=[b.__name__ for b, _ in BUGS])
def test_a_bugged_engine_fails_with_a_message_that_names_the_bug(engine, words):
    result = check("capstone_engine", engine, verbose=False)
    assert not result and not result.not_implemented
    assert words in result.failures[0].hint, str(result)


def test_a_divergence_names_the_step_and_draws_both_masks(capsys):
    from cblab_teach.checks.capstone import show_divergence

    result = check("capstone_engine", StrictMask)
    out = capsys.readouterr().out
    assert "first wrong step: 0" in out and "yours" in out and "reference" in out
    fig = show_divergence()
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    yours, reference = (torch.tensor(t.z) for t in fig.data)
    assert (yours > 0).sum() < (reference > 0).sum()  # the strict mask hides the diagonal
    assert not result


def test_the_worked_solution_passes_and_the_exercise_stub_reads_as_not_implemented():
    from cblab_teach.checks.__main__ import load_solution

    exercise = PROJECTS["capstone_engine"]
    solved = load_solution(exercise, REPO / "solutions" / "capstone_engine.ipynb")
    assert check("capstone_engine", solved, verbose=False)
    stub = load_solution(exercise, REPO / "exercises" / "capstone_engine.ipynb")
    result = check("capstone_engine", stub, verbose=False)
    assert not result and result.not_implemented


def test_an_engine_that_loses_a_request_fails():
    class DropsTheLast(Engine):
        def add_request(self, prompt_ids, max_new_tokens=16, **kw):
            rid = super().add_request(prompt_ids, max_new_tokens, **kw)
            if rid == 3:
                self.waiting.pop()
            return rid

    result = check("capstone_engine", DropsTheLast, verbose=False)
    assert not result and "lost" in result.failures[0].hint


def test_the_capstone_exercise_is_generated_and_leaks_no_solution():
    import re

    import nbformat

    solution = nbformat.read(REPO / "solutions" / "capstone_engine.ipynb", as_version=4)
    exercise = nbformat.read(REPO / "exercises" / "capstone_engine.ipynb", as_version=4)
    sol_code = "\n".join(c.source for c in solution.cells if c.cell_type == "code")
    ex_code = "\n".join(c.source for c in exercise.cells if c.cell_type == "code")
    regions = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", sol_code, flags=re.S)
    assert len(regions) == 5 and ex_code.count("raise NotImplementedError(") == 5
    for region in regions:
        for line in region.splitlines():
            if line.strip() and not line.strip().startswith("#"):
                assert line not in ex_code.splitlines(), f"solution line leaked: {line!r}"
    tagged = [c for c in exercise.cells if "raises-exception" in c.metadata.get("tags", [])]
    assert any('check("capstone_engine"' in c.source for c in tagged)
