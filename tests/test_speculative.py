"""Multi-token decode: accepted tokens are exactly what greedy decoding would produce."""

from __future__ import annotations

import pytest
import torch

from cblab_teach import ConfigError, Engine, EngineConfig, ModelConfig, Request, TinyLM
from cblab_teach.core.sampling import accept_drafts
from cblab_teach.core.speculative import PromptLookupProposer
from cblab_teach.workloads import make_workload

from .helpers import run_alone


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
