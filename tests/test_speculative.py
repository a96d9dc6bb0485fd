"""Multi-token decode: accepted tokens are exactly what greedy decoding would produce."""

from __future__ import annotations

import pytest
import torch

from cblab_teach import ConfigError, Engine, EngineConfig, ModelConfig, Request, TinyLM
from cblab_teach.core.sampling import accept_drafts
from cblab_teach.core.speculative import PromptLookupProposer
from cblab_teach.workloads import make_workload

from .helpers import run_alone
from .reference import greedy


@pytest.fixture(scope="module")
def work():
    return make_workload(8, (2, 20), (4, 24), vocab_size=97, seed=2)


def test_accept_drafts():
    assert accept_drafts([5, 6, 7, 8], (5, 6, 7)) == [5, 6, 7, 8]  # all accepted + bonus
    assert accept_drafts([5, 9, 7, 8], (5, 6, 7)) == [5, 9]  # first mismatch: the target's token
    assert accept_drafts([4, 6, 7, 8], (5, 6, 7)) == [4]


def test_prompt_lookup_proposes_what_followed_the_last_ngram():
    r = Request(0, [1, 2, 3, 4, 9, 1, 2], 10)
    assert PromptLookupProposer(2).propose([r], [3]) == {0: [3, 4, 9]}
    assert PromptLookupProposer(2).propose([r], [0]) == {}
    assert PromptLookupProposer(3).propose([Request(1, [1, 2, 3], 5)], [2]) == {}


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("layout", ["dense", "paged"])
def test_ngram_speculation_equals_greedy(model64, work, k, layout):
    alone = [run_alone(model64, p, n) for p, n in zip(work.prompts, work.max_new_tokens)]
    engine = Engine(
        model64,
        EngineConfig(
            max_tokens_per_step=20,
            prefill_chunk_size=6,
            speculative="ngram",
            num_speculative_tokens=k,
            kv_layout=layout,
            block_size=3,
        ),
    )
    assert engine.generate(work.prompts, work.max_new_tokens) == alone
    assert engine.stats.draft_tokens > 0 and engine.stats.accepted_tokens > 0
    for record in engine.records:
        assert record.used <= record.budget  # every draft token is paid for
        for c in record.plan.chunks:
            assert len(record.new_tokens.get(c.request_id, [])) <= 1 + len(c.drafts)


@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_rejected_drafts_give_their_blocks_back(model64, work, block_size):
    """After verification every table holds exactly the blocks its kept tokens need: rejected guesses free theirs."""
    engine = Engine(
        model64,
        EngineConfig(max_tokens_per_step=24, speculative="ngram", num_speculative_tokens=4, block_size=block_size,
                     num_blocks=120),
    )  # fmt: skip
    for p, n in zip(work.prompts, work.max_new_tokens):
        engine.add_request(p, n)
    rejected_steps = 0
    while engine.has_unfinished():
        record = engine.step()
        for c in record.plan.chunks:
            kept = len(record.new_tokens.get(c.request_id, []))
            if c.drafts and c.request_id in engine.kv.block_tables and kept <= len(c.drafts):
                rejected_steps += 1  # some guesses were thrown away this step
        for rid, table in engine.kv.block_tables.items():
            assert engine.kv.lengths[rid] == engine.request(rid).num_computed
            assert len(table) == -(-engine.kv.lengths[rid] // block_size), f"request {rid} kept rejected blocks"
        owned = sum(len(t) for t in engine.kv.block_tables.values())
        assert owned + engine.kv.num_free_blocks == 120
    assert rejected_steps > 0 and engine.stats.accepted_tokens < engine.stats.draft_tokens
    assert engine.kv.num_free_blocks == 120


def test_speculation_saves_steps(model64, work):
    plain = Engine(model64, EngineConfig(max_tokens_per_step=64, prefill_chunk_size=64))
    spec = Engine(model64, EngineConfig(max_tokens_per_step=64, prefill_chunk_size=64, speculative="ngram"))
    plain.generate(work.prompts, work.max_new_tokens)
    spec.generate(work.prompts, work.max_new_tokens)
    assert len(spec.records) < len(plain.records)
    assert max(len(t) for r in spec.records for t in r.new_tokens.values()) > 1


def test_draft_model_speculation_equals_greedy(model64, work):
    draft = TinyLM(
        ModelConfig(
            vocab_size=97, hidden_size=16, num_heads=2, intermediate_size=32, num_layers=1, dtype=torch.float64
        ),
        seed=4,
    )
    alone = [run_alone(model64, p, n) for p, n in zip(work.prompts, work.max_new_tokens)]
    engine = Engine(
        model64, EngineConfig(max_tokens_per_step=24, speculative="draft", num_speculative_tokens=2), draft_model=draft
    )
    assert engine.generate(work.prompts, work.max_new_tokens) == alone
    assert engine.stats.draft_tokens > 0


def test_a_perfect_draft_is_always_accepted(model64, work):
    engine = Engine(
        model64,
        EngineConfig(max_tokens_per_step=64, speculative="draft", num_speculative_tokens=3),
        draft_model=model64,
    )
    engine.generate(work.prompts, work.max_new_tokens)
    assert engine.stats.acceptance_rate == 1.0


def test_draft_needs_a_model_with_the_same_vocab(model64):
    with pytest.raises(ConfigError, match="draft_model"):
        Engine(model64, EngineConfig(speculative="draft"))
    with pytest.raises(ConfigError, match="vocab"):
        Engine(model64, EngineConfig(speculative="draft"), draft_model=TinyLM(ModelConfig(vocab_size=50)))


def test_a_draft_model_with_a_shorter_context_falls_back_to_plain_decoding(model64):
    """The draft model holds 8 positions; requests need up to 30. Near and past its limit it proposes fewer
    guesses, then none: every request still finishes with its greedy output, nothing raises, nothing hangs."""
    short = TinyLM(
        ModelConfig(vocab_size=97, hidden_size=16, num_heads=2, intermediate_size=32, num_layers=1, max_position=8,
                    dtype=torch.float64),
        seed=4,
    )  # fmt: skip
    engine = Engine(model64, EngineConfig(speculative="draft", num_speculative_tokens=3), draft_model=short)
    prompts, n = [[1, 2, 3], [5] * 6, [7] * 20], [10, 6, 10]
    ids = [engine.add_request(p, m) for p, m in zip(prompts, n)]
    for _ in range(200):  # a bounded loop: a stuck engine fails here instead of hanging
        if not engine.has_unfinished():
            break
        record = engine.step()
        for c in record.plan.chunks:  # the guesses fit in the draft model's window
            assert not c.drafts or c.start + len(c.drafts) + 1 <= short.config.max_position
    assert not engine.has_unfinished()
    assert [engine.output(i) for i in ids] == [greedy(model64, p, m) for p, m in zip(prompts, n)]
    assert engine.stats.draft_tokens > 0  # the short prompt was still helped while it fit
