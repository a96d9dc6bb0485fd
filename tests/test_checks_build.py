"""The build-it-yourself checks (ex10-ex14) reject realistic wrong answers with a pointed hint, and accept
correct answers written here independently of the library's references.

``CORRECT`` and ``WRONG`` join the registry-driven tests of tests/test_checks.py (stub, reference,
independent answer, every wrong answer, the exercise notebook's stub); the tests below pin the hints.
"""

from __future__ import annotations

import hashlib
import math

import pytest

from cblab_teach.checks import EXERCISES, check


def failed_hint(name: str, learner) -> str:
    result = check(name, learner, verbose=False)
    assert not result, f"{name}: the check accepted {learner.__name__}"
    return result.failures[0].hint


# -- ex10: KV memory -------------------------------------------------------------------------
def kv_ok(num_layers, num_heads, num_kv_heads, head_dim, dtype_bytes, pool_bytes, block_size, tokens_per_request):
    per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
    blocks = pool_bytes // (per_token * block_size)
    return per_token, blocks // -(-tokens_per_request // block_size)


def kv_floor_blocks(
    num_layers, num_heads, num_kv_heads, head_dim, dtype_bytes, pool_bytes, block_size, tokens_per_request
):
    per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
    return per_token, pool_bytes // (per_token * block_size) // max(1, tokens_per_request // block_size)


def kv_plus_one_block(
    num_layers, num_heads, num_kv_heads, head_dim, dtype_bytes, pool_bytes, block_size, tokens_per_request
):
    per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
    return per_token, pool_bytes // (per_token * block_size) // (tokens_per_request // block_size + 1)


def kv_forgets_factor_two(
    num_layers, num_heads, num_kv_heads, head_dim, dtype_bytes, pool_bytes, block_size, tokens_per_request
):
    per_token = num_layers * num_kv_heads * head_dim * dtype_bytes
    return per_token, pool_bytes // (per_token * block_size) // math.ceil(tokens_per_request / block_size)


def kv_forgets_layers(
    num_layers, num_heads, num_kv_heads, head_dim, dtype_bytes, pool_bytes, block_size, tokens_per_request
):
    per_token = 2 * num_kv_heads * head_dim * dtype_bytes
    return per_token, pool_bytes // (per_token * block_size) // math.ceil(tokens_per_request / block_size)


def kv_query_heads(
    num_layers, num_heads, num_kv_heads, head_dim, dtype_bytes, pool_bytes, block_size, tokens_per_request
):
    return kv_ok(num_layers, num_heads, num_heads, head_dim, dtype_bytes, pool_bytes, block_size, tokens_per_request)


def kv_no_blocks(
    num_layers, num_heads, num_kv_heads, head_dim, dtype_bytes, pool_bytes, block_size, tokens_per_request
):
    per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
    return per_token, pool_bytes // (per_token * tokens_per_request)


# -- ex11: prefix cache ----------------------------------------------------------------------
def _digest(parent: bytes, block) -> bytes:
    return hashlib.sha256(parent + ",".join(str(t) for t in block).encode()).digest()


def _chain(ids, bs):
    out, parent = [], b""
    for i in range(0, len(ids) // bs * bs, bs):
        parent = _digest(parent, ids[i : i + bs])
        out.append(parent)
    return out


def _leading(digests, cache):
    n = 0
    while n < len(digests) and digests[n] in cache:
        n += 1
    return n


def prefix_ok(token_ids, block_size, cache):
    return _leading(_chain(token_ids[:-1], block_size), cache) * block_size


def prefix_whole_prompt(token_ids, block_size, cache):
    return _leading(_chain(token_ids, block_size), cache) * block_size


def prefix_unchained(token_ids, block_size, cache):
    ids = token_ids[:-1]
    blocks = [_digest(b"", ids[i : i + block_size]) for i in range(0, len(ids) // block_size * block_size, block_size)]
    return _leading(blocks, cache) * block_size


def prefix_counts_partial_block(token_ids, block_size, cache):
    digests = _chain(token_ids[:-1], block_size)
    n = _leading(digests, cache)
    return len(token_ids) - 1 if digests and n == len(digests) else n * block_size


def prefix_no_break(token_ids, block_size, cache):
    return sum(d in cache for d in _chain(token_ids[:-1], block_size)) * block_size


# -- ex12: preemption ------------------------------------------------------------------------
def _freed(victims, running):
    tables = {rid: t for rid, _, _, t in running}
    holders = {}
    for t in tables.values():
        for b in t:
            holders[b] = holders.get(b, 0) + 1
    return sum(1 for v in victims for b in tables[v] if holders[b] == 1)


def victims_ok(running, requester, blocks_needed, free_blocks, policy, key=None, shared_counts=False, extra=0):
    if key is None:
        key = (lambda r: (r[2], r[1])) if policy == "priority" else (lambda r: (r[1],))
    order = sorted(running, key=key, reverse=True)
    victims, freed = [], 0
    tables = {rid: t for rid, _, _, t in running}
    for rid, *_ in order:
        if free_blocks + freed >= blocks_needed and extra == 0:
            break
        if free_blocks + freed >= blocks_needed:
            extra -= 1
        victims.append(rid)
        freed = sum(len(tables[v]) for v in victims) if shared_counts else _freed(victims, running)
        if rid == requester:
            break
    return victims, freed


def victims_oldest_first(running, requester, blocks_needed, free_blocks, policy):
    if policy == "priority":
        return victims_ok(running, requester, blocks_needed, free_blocks, policy, key=lambda r: (r[2], -r[1]))
    return victims_ok(running, requester, blocks_needed, free_blocks, policy, key=lambda r: (-r[1],))


def victims_count_shared(running, requester, blocks_needed, free_blocks, policy):
    return victims_ok(running, requester, blocks_needed, free_blocks, policy, shared_counts=True)


def victims_one_too_many(running, requester, blocks_needed, free_blocks, policy):
    return victims_ok(running, requester, blocks_needed, free_blocks, policy, extra=1)


def victims_most_urgent_first(running, requester, blocks_needed, free_blocks, policy):
    return victims_ok(running, requester, blocks_needed, free_blocks, policy, key=lambda r: (-r[2], r[1]))


# -- ex13: speculative verify -----------------------------------------------------------------
def verify_ok(drafts, target_best):
    n = 0
    while n < len(drafts) and drafts[n] == target_best[n]:
        n += 1
    return drafts[:n] + [target_best[n]], len(drafts) - n


def verify_one_too_many(drafts, target_best):
    tokens, drop = verify_ok(drafts, target_best)
    n = len(tokens) - 1
    return (drafts[: n + 1] + [target_best[n + 1]], drop - 1) if n < len(drafts) else (tokens, drop)


def verify_no_bonus(drafts, target_best):
    tokens, drop = verify_ok(drafts, target_best)
    return tokens[:-1], drop


def verify_truncates_accepted_too(drafts, target_best):
    tokens, drop = verify_ok(drafts, target_best)
    return tokens, drop + 1


def verify_truncate_by_tokens(drafts, target_best):
    tokens, _ = verify_ok(drafts, target_best)
    return tokens, len(drafts) + 1 - len(tokens) - 1 if len(tokens) > 1 else len(drafts) - 1


def verify_shifted(drafts, target_best):
    n = 0
    while n < len(drafts) and drafts[n] == target_best[n + 1]:
        n += 1
    return drafts[:n] + [target_best[n]], len(drafts) - n


# -- ex14: adaptive budget --------------------------------------------------------------------
def budget_ok(budget, observed, target, lo, hi):
    ratio = min(2.0, max(0.5, target / observed))
    return max(lo, min(hi, round(budget * ratio)))


def budget_bang_bang(budget, observed, target, lo, hi):
    return max(lo, min(hi, budget + 64 if observed < target else budget - 64))


def budget_ignores_limits(budget, observed, target, lo, hi):
    return max(1, round(budget * min(2.0, max(0.5, target / observed))))


def budget_wrong_way(budget, observed, target, lo, hi):
    return max(lo, min(hi, round(budget * min(2.0, max(0.5, observed / target)))))


def budget_float(budget, observed, target, lo, hi):
    return float(budget_ok(budget, observed, target, lo, hi))


def budget_too_timid(budget, observed, target, lo, hi):
    return max(lo, min(hi, budget + (1 if observed < target else -1)))


BUILD_CORRECT = {
    "ex10_kv_memory": kv_ok,
    "ex11_prefix_cache": prefix_ok,
    "ex12_preemption": victims_ok,
    "ex13_speculative_verify": verify_ok,
    "ex14_adaptive_budget": budget_ok,
}

BUILD_WRONG = {
    "ex10_kv_memory": [
        kv_floor_blocks,
        kv_plus_one_block,
        kv_forgets_factor_two,
        kv_forgets_layers,
        kv_query_heads,
        kv_no_blocks,
    ],
    "ex11_prefix_cache": [prefix_whole_prompt, prefix_unchained, prefix_counts_partial_block, prefix_no_break],
    "ex12_preemption": [victims_oldest_first, victims_count_shared, victims_one_too_many, victims_most_urgent_first],
    "ex13_speculative_verify": [verify_one_too_many, verify_no_bonus, verify_truncates_accepted_too, verify_shifted],
    "ex14_adaptive_budget": [budget_bang_bang, budget_ignores_limits, budget_wrong_way, budget_float, budget_too_timid],
}

POINTED = [
    ("ex10_kv_memory", kv_floor_blocks, "ceil"),
    ("ex10_kv_memory", kv_plus_one_block, "off by one"),
    ("ex10_kv_memory", kv_forgets_factor_two, "multiply by 2"),
    ("ex10_kv_memory", kv_forgets_layers, "num_layers"),
    ("ex10_kv_memory", kv_query_heads, "num_kv_heads"),
    ("ex11_prefix_cache", prefix_whole_prompt, "token_ids[:-1]"),
    ("ex11_prefix_cache", prefix_unchained, "chain the digests"),
    ("ex11_prefix_cache", prefix_counts_partial_block, "whole blocks"),
    ("ex11_prefix_cache", prefix_no_break, "first miss"),
    ("ex12_preemption", victims_oldest_first, "newest"),
    ("ex12_preemption", victims_count_shared, "shared"),
    ("ex12_preemption", victims_one_too_many, "more than needed"),
    ("ex12_preemption", victims_most_urgent_first, "least urgent"),
    ("ex13_speculative_verify", verify_one_too_many, "one draft too many"),
    ("ex13_speculative_verify", verify_no_bonus, "bonus"),
    ("ex13_speculative_verify", verify_truncates_accepted_too, "truncate only"),
    ("ex13_speculative_verify", verify_shifted, "target_best[i]"),
    ("ex14_adaptive_budget", budget_bang_bang, "oscillates"),
    ("ex14_adaptive_budget", budget_ignores_limits, "clip"),
    ("ex14_adaptive_budget", budget_wrong_way, "wrong way"),
    ("ex14_adaptive_budget", budget_float, "int"),
    ("ex14_adaptive_budget", budget_too_timid, "settle"),
]


@pytest.mark.parametrize("name,wrong,word", POINTED, ids=lambda x: getattr(x, "__name__", x))
def test_the_hint_names_the_mistake(name, wrong, word):
    assert word in failed_hint(name, wrong)


@pytest.mark.parametrize("name", sorted(BUILD_CORRECT))
def test_at_least_three_wrong_answers_and_an_independent_right_one(name):
    assert name in EXERCISES and len(BUILD_WRONG[name]) >= 3
    assert check(name, BUILD_CORRECT[name], verbose=False), name


def test_kv_reference_is_measured_from_real_storage():
    """bytes per token comes from a real pool's tensors: a shape change moves it as the formula says."""
    from cblab_teach.checks.ex10_kv_memory import bytes_per_token

    assert bytes_per_token(32, 8, 128, 2) == 2 * 32 * 8 * 128 * 2  # Llama-3-8B-like shape in bf16: 128 KiB
    assert bytes_per_token(2, 4, 8, 4) * 2 == bytes_per_token(4, 4, 8, 4)


def test_prefix_reference_agrees_with_a_real_paged_pool():
    """The check's reference is what a PagedAllocator with prefix caching reports for the same cache."""
    from cblab_teach.checks.ex11_prefix_cache import reference_cached_prefix
    from cblab_teach.core.kv_cache import PagedAllocator
    from cblab_teach.core.prefix_cache import block_digests

    pool = PagedAllocator(1, 1, 1, 16, 4, enable_prefix_caching=True)
    served = [7, 3, 9, 1, 4, 4, 2, 8, 5, 5]
    pool.admit(0, len(served))
    pool.ensure(0, len(served))
    pool.register_full_blocks(0, served)
    cache = {d: i for i, d in enumerate(block_digests(served, 4))}
    for prompt in ([7, 3, 9, 1, 4, 4, 2, 8], [7, 3, 9, 1, 4, 4, 2, 8, 0], [7, 3, 9, 2, 0], served):
        assert reference_cached_prefix(prompt, 4, cache) == pool.cached_prefix(prompt)


def test_preemption_reference_matches_the_engine():
    """A real engine under preemption preempts the newest request first, as the check's reference says."""
    from cblab_teach import Engine, EngineConfig, TinyLM
    from cblab_teach.model import ModelConfig

    model = TinyLM(ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32))
    engine = Engine(
        model, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4, block_size=2, num_blocks=6, preemption=True)
    )
    for i in range(3):
        engine.add_request([1 + i, 2, 3], max_new_tokens=6)
    preempted = [rid for rec in engine.run() for rid in rec.preempted]
    assert preempted and preempted[0] == 2  # the newest of the three
