"""The exercise checks must catch wrong answers: each fails on the stub and on realistic mistakes,
and passes on a correct answer written independently of the library's reference."""

from __future__ import annotations

import functools
import heapq
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cblab_teach.checks import EXERCISES, CheckResult, UnknownExerciseError, check
from cblab_teach.errors import CBLabError
from cblab_teach.plugins.base import SchedulerPlugin
from tests.test_checks_build import BUILD_CORRECT, BUILD_WRONG

NAMES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "solutions").glob("ex*.ipynb"))


def stub(*args, **kwargs):
    raise NotImplementedError("hint: build the mask with broadcasting")


@functools.cache
def _quiet_check(name: str, learner) -> CheckResult:
    """One run per (exercise, answer): the checks are deterministic, and a sampler's run is thousands of draws."""
    return check(name, learner, verbose=False)


def failed(name: str, learner) -> CheckResult:
    result = _quiet_check(name, learner)
    assert not result.passed and not result, f"{name}: the check accepted a wrong answer"
    assert result.failures and result.failures[0].hint
    return result


# -- ex01: ragged mask ----------------------------------------------------------------
def mask_ok(seq_ids, positions, key_seq_ids, key_positions):
    n, m = len(seq_ids), len(key_seq_ids)
    out = torch.zeros(n, m, dtype=torch.bool)
    for i in range(n):
        for j in range(m):
            out[i, j] = bool(seq_ids[i] == key_seq_ids[j] and key_positions[j] <= positions[i])
    return out


def mask_no_causality(seq_ids, positions, key_seq_ids, key_positions):
    return seq_ids[:, None] == key_seq_ids[None, :]


def mask_requests_see_each_other(seq_ids, positions, key_seq_ids, key_positions):
    return key_positions[None, :] <= positions[:, None]


def mask_strict(seq_ids, positions, key_seq_ids, key_positions):
    return (seq_ids[:, None] == key_seq_ids[None, :]) & (key_positions[None, :] < positions[:, None])


def mask_tril_by_index(seq_ids, positions, key_seq_ids, key_positions):
    """Treats query i and key i as the same token: wrong once a cached prefix exists."""
    same = seq_ids[:, None] == key_seq_ids[None, :]
    return same & torch.ones(len(seq_ids), len(key_seq_ids), dtype=torch.bool).tril()


def mask_float(seq_ids, positions, key_seq_ids, key_positions):
    return mask_ok(seq_ids, positions, key_seq_ids, key_positions).float()


# -- ex02: decode-first plan ------------------------------------------------------------
def plan_ok(decoding, prefilling, budget, chunk_size):
    plan, left = [], budget
    for rid, _ in sorted(decoding, key=lambda d: (d[1], d[0]))[:budget]:
        plan.append((rid, "decode", 1))
        left -= 1
    for rid, todo in sorted(prefilling):
        n = min(chunk_size, todo, left)
        if n:
            plan.append((rid, "prefill", n))
            left -= n
    return plan


def plan_prefill_first(decoding, prefilling, budget, chunk_size):
    plan, left = [], budget
    for rid, todo in sorted(prefilling):
        n = min(chunk_size, todo, left)
        if n:
            plan.append((rid, "prefill", n))
            left -= n
    for rid, _ in sorted(decoding)[:left]:
        plan.append((rid, "decode", 1))
    return plan


def plan_starves(decoding, prefilling, budget, chunk_size):
    """A naive engine's bug: always the first decoders in id order."""
    return plan_ok([(rid, 0) for rid, _ in decoding], prefilling, budget, chunk_size)


def plan_most_recent_first(decoding, prefilling, budget, chunk_size):
    return plan_ok([(rid, -last) for rid, last in decoding], prefilling, budget, chunk_size)


def plan_no_chunk_cap(decoding, prefilling, budget, chunk_size):
    return plan_ok(decoding, prefilling, budget, 10**6)


def plan_over_budget(decoding, prefilling, budget, chunk_size):
    plan = plan_ok(decoding, [], budget, chunk_size)
    return plan + [(rid, "prefill", min(chunk_size, todo)) for rid, todo in prefilling]


# -- ex03: chunked prefill ----------------------------------------------------------------
def chunks_ok(prefilling, budget_left, chunk_size):
    out = []
    for rid, pos, length in prefilling:
        n = min(chunk_size, length - pos, budget_left)
        if n > 0:
            out.append((rid, pos, n))
            budget_left -= n
    return out


def chunks_from_zero(prefilling, budget_left, chunk_size):
    return [(rid, 0, n) for rid, _, n in chunks_ok(prefilling, budget_left, chunk_size)]


def chunks_ignore_prompt_end(prefilling, budget_left, chunk_size):
    out = []
    for rid, pos, _ in prefilling:
        n = min(chunk_size, budget_left)
        if n > 0:
            out.append((rid, pos, n))
            budget_left -= n
    return out


def chunks_all_or_nothing(prefilling, budget_left, chunk_size):
    out = []
    for rid, pos, length in prefilling:
        n = min(chunk_size, length - pos)
        if n <= budget_left:
            out.append((rid, pos, n))
            budget_left -= n
    return out


def chunks_off_by_one(prefilling, budget_left, chunk_size):
    return chunks_ok([(rid, pos, length - 1) for rid, pos, length in prefilling], budget_left, chunk_size)


# -- ex04: paged allocator ----------------------------------------------------------------
class PagedOk:
    def __init__(self, num_blocks, block_size):
        self.block_size = block_size
        self.free_blocks = list(range(num_blocks))
        self.pool = torch.zeros(num_blocks, block_size, dtype=torch.float64)
        self.block_tables, self.lengths = {}, {}

    def allocate(self, rid):
        self.block_tables[rid], self.lengths[rid] = [], 0

    def _take(self):
        return self.free_blocks.pop(0)  # front of the list: different ids than the engine, still right

    def append(self, rid, values):
        for value in values:
            n = self.lengths[rid]
            if n % self.block_size == 0:
                self.block_tables[rid].append(self._take())
            self.pool[self.block_tables[rid][n // self.block_size], n % self.block_size] = value
            self.lengths[rid] = n + 1

    def flatten(self, rid):
        return self.pool[self.block_tables[rid]].reshape(-1)[: self.lengths[rid]]

    def free(self, rid):
        self.free_blocks.extend(self.block_tables.pop(rid))
        del self.lengths[rid]


class PagedTwice(PagedOk):
    def _take(self):
        return self.free_blocks[0]  # peeks instead of popping: the same block goes to two requests


class PagedFlattenOffByOne(PagedOk):
    def flatten(self, rid):
        return self.pool[self.block_tables[rid]].reshape(-1)[: self.lengths[rid] - 1]


class PagedFlattenUntrimmed(PagedOk):
    def flatten(self, rid):
        return self.pool[self.block_tables[rid]].reshape(-1)


class PagedLeaks(PagedOk):
    def free(self, rid):
        del self.block_tables[rid], self.lengths[rid]


class PagedBlockPerAppend(PagedOk):
    def append(self, rid, values):
        self.block_tables[rid].append(self._take())
        start = self.lengths[rid]
        for i, value in enumerate(values):
            self.pool[self.block_tables[rid][-1], i % self.block_size] = value
        self.lengths[rid] = start + len(values)


# -- ex05: masked attention ----------------------------------------------------------------
def attn_ok(q, k, v, mask):
    scores = (q @ k.T) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.max(dim=-1, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(scores - top)
    total = w.sum(dim=-1, keepdim=True)
    return (w / torch.where(total > 0, total, torch.ones_like(total))) @ v


def attn_leaky_clamp(q, k, v, mask):
    scores = (q @ k.T) / math.sqrt(q.shape[-1])
    p = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).clamp(min=1e-6, max=1.0)
    return p @ v


def attn_nan_rows(q, k, v, mask):
    scores = (q @ k.T) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def attn_naive_exp(q, k, v, mask):
    w = torch.exp((q @ k.T) / math.sqrt(q.shape[-1])) * mask
    return w / w.sum(dim=-1, keepdim=True).clamp_min(1e-30) @ v


def attn_mask_after_softmax(q, k, v, mask):
    p = torch.softmax((q @ k.T) / math.sqrt(q.shape[-1]), dim=-1)
    return (p * mask) @ v


def attn_unscaled(q, k, v, mask):
    return attn_ok(q * math.sqrt(q.shape[-1]), k, v, mask)


# -- ex06: static vs continuous ------------------------------------------------------------
def steps_ok(prompt_lens, new_tokens, batch_size):
    static = sum(max(new_tokens[i : i + batch_size]) for i in range(0, len(new_tokens), batch_size))
    slots = [0] * batch_size  # the step at which each slot frees up
    for n in new_tokens:
        start = heapq.heappop(slots)
        heapq.heappush(slots, start + n)
    return static, max(slots)


def steps_global_max(prompt_lens, new_tokens, batch_size):
    return math.ceil(len(new_tokens) / batch_size) * max(new_tokens), steps_ok(prompt_lens, new_tokens, batch_size)[1]


def steps_prefill_extra(prompt_lens, new_tokens, batch_size):
    static, cont = steps_ok(prompt_lens, new_tokens, batch_size)
    return static + math.ceil(len(new_tokens) / batch_size), cont


def steps_perfect_packing(prompt_lens, new_tokens, batch_size):
    return steps_ok(prompt_lens, new_tokens, batch_size)[0], math.ceil(sum(new_tokens) / batch_size)


def steps_continuous_like_static(prompt_lens, new_tokens, batch_size):
    static = steps_ok(prompt_lens, new_tokens, batch_size)[0]
    return static, static


# -- ex07: priority plugin -----------------------------------------------------------------
class PriorityOk(SchedulerPlugin):
    def __init__(self):
        self.held = []

    def before_step(self, engine):
        free = max(0, min(engine.config.max_running, engine.budget) - len(engine.running))
        queue = sorted(engine.waiting, key=lambda r: (r.priority, r.arrival))
        engine.waiting[:] = queue[:free]
        self.held = queue[free:]

    def after_step(self, engine, record):
        engine.waiting.extend(self.held)
        self.held = []


class PrioritySortOnly(SchedulerPlugin):
    """Sorting alone changes nothing: the FCFS scheduler orders waiting by arrival itself."""

    def before_step(self, engine):
        engine.waiting.sort(key=lambda r: (r.priority, r.arrival))


class PriorityLargestFirst(PriorityOk):
    def before_step(self, engine):
        free = max(0, min(engine.config.max_running, engine.budget) - len(engine.running))
        queue = sorted(engine.waiting, key=lambda r: (-r.priority, r.arrival))
        engine.waiting[:] = queue[:free]
        self.held = queue[free:]


class PriorityIgnoresRunning(PriorityOk):
    def before_step(self, engine):
        free = engine.config.max_running
        queue = sorted(engine.waiting, key=lambda r: (r.priority, r.arrival))
        engine.waiting[:] = queue[:free]
        self.held = queue[free:]


class PriorityLosesHeld(PriorityOk):
    def after_step(self, engine, record):
        self.held = []


# -- ex08: TTFT / TPOT ----------------------------------------------------------------------
def metrics_ok(records, arrival_steps, tpot_denominator=lambda n: n - 1, ttft_from="token", origin="arrival"):
    first_token, last_token, count, first_sched = {}, {}, {}, {}
    for rec in records:
        for chunk in rec.plan.chunks:
            first_sched.setdefault(chunk.request_id, rec.step)
        for rid, toks in rec.new_tokens.items():
            first_token.setdefault(rid, rec.step)
            last_token[rid] = rec.step
            count[rid] = count.get(rid, 0) + len(toks)
    out = {}
    for rid in first_token:
        a = arrival_steps[rid] if origin == "arrival" else 0
        f = first_token[rid] if ttft_from == "token" else first_sched[rid]
        ttft, e2e = f - a + 1, last_token[rid] - a + 1
        n = count[rid]
        out[rid] = (ttft, (e2e - ttft) / tpot_denominator(n) if n > 1 else None)
    return out


def metrics_tpot_over_n(records, arrival_steps):
    return metrics_ok(records, arrival_steps, tpot_denominator=lambda n: n)


def metrics_ttft_from_first_chunk(records, arrival_steps):
    return metrics_ok(records, arrival_steps, ttft_from="scheduled")


def metrics_ttft_from_step_zero(records, arrival_steps):
    return metrics_ok(records, arrival_steps, origin="zero")


def metrics_tpot_zero_for_one_token(records, arrival_steps):
    return {rid: (t, 0.0 if p is None else p) for rid, (t, p) in metrics_ok(records, arrival_steps).items()}


# -- ex09: LSE merge ------------------------------------------------------------------------
def merge_ok(outs, lses):
    w = torch.softmax(lses, dim=0)  # softmax over shards = exp(lse - logsumexp(lse))
    w = torch.nan_to_num(w, nan=0.0)  # a row no shard sees: all -inf -> NaN -> 0
    return (w[..., None] * outs).sum(dim=0)


def merge_plain_average(outs, lses):
    return outs.mean(dim=0)


def merge_naive_exp(outs, lses):
    w = torch.exp(lses)
    return (w[..., None] * outs).sum(0) / w.sum(0)[..., None]


def merge_nan_on_empty_rows(outs, lses):
    w = torch.exp(lses - lses.max(dim=0).values)
    return (w[..., None] * outs).sum(0) / w.sum(0)[..., None]


def merge_unnormalised(outs, lses):
    w = torch.exp(lses - torch.nan_to_num(lses.max(dim=0).values, neginf=0.0))
    return (w[..., None] * outs).sum(0)


# -- ex15: seeded sampler ---------------------------------------------------------------------
class SamplerOk:
    """Written apart from the library: Python floats, a loop over the ranked tokens, an inverse-CDF draw.

    ``probs``'s keyword switches plant the classic mistakes; the wrong samplers below draw from them."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def probs(logits, temperature, top_k, top_p, temperature_after=False, ties=True, renormalised=True, extra=0):
        z = [float(v) / (1.0 if temperature_after else temperature) for v in logits]
        ranked = sorted(range(len(z)), key=lambda t: -z[t])
        keep = set(ranked)
        if 0 < top_k < len(z):
            kth = z[ranked[top_k - 1]]
            keep = {t for t in keep if z[t] >= kth} if ties else set(ranked[:top_k])
        top = max(z)
        if top_p < 1.0:
            total = sum(math.exp(z[t] - top) for t in (keep if renormalised else ranked))
            kept, mass = [], 0.0
            for t in (t for t in ranked if t in keep):
                if mass >= top_p:
                    break
                kept.append(t)
                mass += math.exp(z[t] - top) / total
            keep = set([t for t in ranked if t in keep][: max(1, len(kept) + extra)])
        scale = temperature if temperature_after else 1.0  # dividing probabilities: renormalising undoes it
        weights = [math.exp(z[t] - top) / scale if t in keep else 0.0 for t in range(len(z))]
        return torch.tensor([w / sum(weights) for w in weights], dtype=torch.float64)

    def sample(self, logits, temperature=1.0, top_k=0, top_p=1.0):
        u = float(torch.rand((), dtype=torch.float64, generator=self.generator))
        probs, mass = self.probs(logits, temperature, top_k, top_p).tolist(), 0.0
        for t, p in enumerate(probs):
            mass += p
            if u < mass:
                return t
        return max(t for t, p in enumerate(probs) if p > 0)  # u past a total rounded just below 1


def _planted(name, **mistake):
    """A sampler with one planted mistake in its distribution, drawing correctly from it."""

    def sample(self, logits, temperature=1.0, top_k=0, top_p=1.0):
        probs = self.probs(logits, temperature, top_k, top_p, **mistake)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    return type(name, (SamplerOk,), {"sample": sample, "mistake": mistake})


SamplerTemperatureAfterSoftmax = _planted("SamplerTemperatureAfterSoftmax", temperature_after=True)
SamplerTopKDropsTies = _planted("SamplerTopKDropsTies", ties=False)
SamplerTopPOneTooFew = _planted("SamplerTopPOneTooFew", extra=-1)
SamplerTopPOneTooMany = _planted("SamplerTopPOneTooMany", extra=1)
SamplerTopPNotRenormalised = _planted("SamplerTopPNotRenormalised", renormalised=False)


class SamplerDrawsUnnormalised(SamplerOk):
    """Zeroes the filtered tokens of the full softmax and never renormalises: an inverse-CDF draw past the kept
    mass lands on the last token."""

    @classmethod
    def unnormalised(cls, logits, temperature, top_k, top_p):
        full = torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, -1)
        kept = torch.where(cls.probs(logits, temperature, top_k, top_p) > 0, full, torch.zeros_like(full))
        kept[-1] += 1 - kept.sum()
        return kept

    def sample(self, logits, temperature=1.0, top_k=0, top_p=1.0):
        probs = self.unnormalised(logits, temperature, top_k, top_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class SamplerGlobalGenerator(SamplerOk):
    def sample(self, logits, temperature=1.0, top_k=0, top_p=1.0):
        return int(torch.multinomial(self.probs(logits, temperature, top_k, top_p), 1))  # torch's shared stream


class SamplerReseedsEveryCall(SamplerOk):
    def __init__(self, seed):
        self.seed = seed

    def sample(self, logits, temperature=1.0, top_k=0, top_p=1.0):
        generator = torch.Generator().manual_seed(self.seed)
        return int(torch.multinomial(self.probs(logits, temperature, top_k, top_p), 1, generator=generator))


class SamplerIgnoresTheSeed(SamplerOk):
    def __init__(self, seed):
        super().__init__(0)


SAMPLER_HINTS = {  # each planted mistake -> words its first failing case's hint must hold
    SamplerTemperatureAfterSoftmax: "LOGITS by the temperature",
    SamplerTopKDropsTies: "tie with the k-th largest",
    SamplerTopPOneTooFew: "one token too few",
    SamplerTopPOneTooMany: "one token too many",
    SamplerTopPNotRenormalised: "renormalised over the tokens top-k kept",
    SamplerDrawsUnnormalised: "the filters remove them",
    SamplerGlobalGenerator: "OWN generator",
    SamplerReseedsEveryCall: "re-seeded on every call",
    SamplerIgnoresTheSeed: "the seed is ignored",
}


CORRECT = {
    "ex01_ragged_mask": mask_ok,
    "ex02_decode_first_scheduler": plan_ok,
    "ex03_chunked_prefill": chunks_ok,
    "ex04_paged_allocator": PagedOk,
    "ex05_masked_attention": attn_ok,
    "ex06_static_vs_continuous": steps_ok,
    "ex07_priority_plugin": PriorityOk,
    "ex08_ttft_tpot": metrics_ok,
    "ex09_lse_merge": merge_ok,
    "ex15_sampler": SamplerOk,
    **BUILD_CORRECT,
}

WRONG = {
    "ex01_ragged_mask": [mask_no_causality, mask_requests_see_each_other, mask_strict, mask_tril_by_index, mask_float],
    "ex02_decode_first_scheduler": [
        plan_prefill_first,
        plan_starves,
        plan_most_recent_first,
        plan_no_chunk_cap,
        plan_over_budget,
    ],
    "ex03_chunked_prefill": [chunks_from_zero, chunks_ignore_prompt_end, chunks_all_or_nothing, chunks_off_by_one],
    "ex04_paged_allocator": [
        PagedTwice,
        PagedFlattenOffByOne,
        PagedFlattenUntrimmed,
        PagedLeaks,
        PagedBlockPerAppend,
    ],
    "ex05_masked_attention": [
        attn_leaky_clamp,
        attn_nan_rows,
        attn_naive_exp,
        attn_mask_after_softmax,
        attn_unscaled,
    ],
    "ex06_static_vs_continuous": [
        steps_global_max,
        steps_prefill_extra,
        steps_perfect_packing,
        steps_continuous_like_static,
    ],
    "ex07_priority_plugin": [PrioritySortOnly, PriorityLargestFirst, PriorityIgnoresRunning, PriorityLosesHeld],
    "ex08_ttft_tpot": [
        metrics_tpot_over_n,
        metrics_ttft_from_first_chunk,
        metrics_ttft_from_step_zero,
        metrics_tpot_zero_for_one_token,
    ],
    "ex09_lse_merge": [merge_plain_average, merge_naive_exp, merge_nan_on_empty_rows, merge_unnormalised],
    "ex15_sampler": list(SAMPLER_HINTS),
    **BUILD_WRONG,
}


def test_every_exercise_is_registered():
    assert list(EXERCISES) == NAMES and len(NAMES) >= 14  # one check per solution notebook
    assert set(CORRECT) == set(WRONG) == set(NAMES)
    assert all(len(wrong) >= 3 for wrong in WRONG.values())


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name):
    result = check(name, EXERCISES[name].reference, verbose=False)
    assert result.passed and result and not result.failures
    assert result.total >= len(EXERCISES[name].fixed_cases()) + 1


@pytest.mark.parametrize("name", NAMES)
def test_independent_correct_answer_passes(name):
    result = check(name, CORRECT[name], verbose=False)
    assert result.passed, str(result)


@pytest.mark.parametrize("name", NAMES)
def test_stub_fails_with_a_clear_message(name, capsys):
    learner = stub
    if name in ("ex04_paged_allocator", "ex07_priority_plugin", "ex15_sampler"):
        base = SchedulerPlugin if name == "ex07_priority_plugin" else object
        learner = type("Stub", (base,), {"__init__": stub})
    result = check(name, learner)
    out = capsys.readouterr().out
    assert not result and result.not_implemented
    assert "not implemented yet" in out and "NotImplementedError" in out
    assert len(result.failures) == 1


@pytest.mark.parametrize(
    "name,wrong", [(n, w) for n in NAMES for w in WRONG[n]], ids=lambda x: getattr(x, "__name__", x)
)
def test_wrong_answer_fails(name, wrong):
    failed(name, wrong)


def test_failure_report_shows_input_expected_got_and_hint(capsys):
    result = check("ex01_ragged_mask", mask_no_causality)
    out = capsys.readouterr().out
    for word in ("FAILED", "input", "expected", "got", "hint", "future"):
        assert word in out
    assert "causality" in result.failures[0].hint


def test_the_summary_says_how_many_cases_passed():
    """The old "FAILED 3/17 cases" read as three failures: the count is said in words, passed first."""
    result = check("ex01_ragged_mask", mask_no_causality, verbose=False)
    passed, total = len(result.passed_cases), result.total
    assert 0 < passed < total, "a wrong answer that passes some cases"
    assert result.summary == f"ex01_ragged_mask: FAILED, {passed} of {total} cases passed"
    assert f"{passed}/{total}" not in result.report()
    good = check("ex01_ragged_mask", mask_ok, verbose=False)
    assert good.summary == f"ex01_ragged_mask: PASSED, {good.total} of {good.total} cases passed"


def test_specific_hints_name_the_mistake():
    assert "before any prefill" in failed("ex02_decode_first_scheduler", plan_prefill_first).failures[0].hint
    assert "starves" in failed("ex02_decode_first_scheduler", plan_starves).failures[0].hint
    assert "twice" in failed("ex04_paged_allocator", PagedTwice).failures[0].hint
    assert "leak" in failed("ex05_masked_attention", attn_leaky_clamp).failures[0].hint
    assert "NaN" in failed("ex05_masked_attention", attn_nan_rows).failures[0].hint
    assert "N - 1" in failed("ex08_ttft_tpot", metrics_tpot_over_n).failures[0].hint
    assert "plain average" in failed("ex09_lse_merge", merge_plain_average).failures[0].hint


def test_a_crashing_answer_is_a_failed_case_not_a_crash():
    def crashes(*args, **kwargs):
        return 1 / 0

    result = check("ex03_chunked_prefill", crashes, verbose=False)
    assert not result and "ZeroDivisionError" in result.failures[0].got


def test_randomised_cases_follow_the_seed():
    ex = EXERCISES["ex02_decode_first_scheduler"]
    assert [c.inputs for c in ex.cases(seed=1)] == [c.inputs for c in ex.cases(seed=1)]
    assert [c.inputs for c in ex.cases(seed=1)] != [c.inputs for c in ex.cases(seed=2)]


def test_unknown_exercise_is_a_typed_error_listing_the_names():
    with pytest.raises(UnknownExerciseError) as info:
        check("ex99_nope", mask_ok)
    assert isinstance(info.value, CBLabError)
    assert "ex99_nope" in str(info.value) and all(name in str(info.value) for name in NAMES)


def test_command_line_lists_and_checks_a_solution_notebook(capsys):
    listing = subprocess.run(  # the real entry point once; the other calls run main() in this process (faster)
        [sys.executable, "-m", "cblab_teach.checks"], capture_output=True, text=True, timeout=120, check=True
    )
    assert all(name in listing.stdout for name in NAMES)
    from cblab_teach.checks.__main__ import main

    assert main(["ex03_chunked_prefill", "--solution"]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main(["ex03_chunked_prefill"]) == 1  # the default is the learner's notebook: untouched, its stub fails
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "hint" in out
    assert main(["ex99_nope"]) == 2 and "valid names" in capsys.readouterr().err


NOT_NOTEBOOKS = [
    ("not JSON", b"print('hello')", r"not valid JSON: Expecting value: line 1 column 1"),
    ("JSON without cells", b'{"hello": "not a notebook"}', r"not a Jupyter notebook: no \"cells\" list"),
    ("a JSON list", b"[1, 2]", r"not a Jupyter notebook: no \"cells\" list"),
    ("cells is not a list", b'{"cells": "x = 1"}', r"not a Jupyter notebook: no \"cells\" list"),
    ("a cell without a type", b'{"cells": [{"source": "x = 1"}]}', r"not a Jupyter notebook: cell 0 is not a cell"),
    ("a code cell without source", b'{"cells": [{"cell_type": "code"}]}', r"not a Jupyter notebook: cell 0 is not"),
    ("source of numbers", b'{"cells": [{"cell_type": "code", "source": [1, 2]}]}', r"cell 0 is not a cell"),
    ("not UTF-8", b"\xff\xfe\x00", r"cannot read the file: 'utf-8' codec can't decode byte 0xff"),
]


@pytest.mark.parametrize("content,message", [n[1:] for n in NOT_NOTEBOOKS], ids=[n[0] for n in NOT_NOTEBOOKS])
def test_a_notebook_that_is_not_one_is_a_one_line_error_naming_it(tmp_path, content, message):
    from cblab_teach.checks.__main__ import main

    path = tmp_path / "answer.ipynb"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as info:
        main(["ex03_chunked_prefill", "--notebook", str(path)])
    text = str(info.value.code)
    assert isinstance(info.value.code, str) and "\n" not in text, text  # a message: Python exits with status 1
    assert text.startswith(f"{path}: ") and re.search(message, text), text


def test_the_command_line_names_a_file_that_is_not_a_notebook_without_a_traceback(tmp_path):
    path = tmp_path / "notes.ipynb"
    path.write_text("my notes, not a notebook", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "cblab_teach.checks", "ex03_chunked_prefill", "--notebook", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [f"{path}: not valid JSON: Expecting value: line 1 column 1 (char 0)"]


def test_own_merge_reference_agrees_with_the_sharding_module():
    from cblab_teach.advanced import sharding
    from cblab_teach.checks.ex09_lse_merge import reference_merge_partials

    for case in EXERCISES["ex09_lse_merge"].cases(seed=3):
        outs, lses = case.inputs["outs"], case.inputs["lses"]
        mine = reference_merge_partials(outs, lses)
        theirs = sharding.merge_partials(list(outs), list(lses))
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)


def test_ttft_reference_agrees_with_the_metrics_collector():
    from cblab_teach import monitoring
    from cblab_teach.checks.ex08_ttft_tpot import reference_ttft_tpot, run_staggered

    engine = run_staggered([(0, 9, 4), (1, 3, 1), (2, 6, 5), (4, 2, 3)], budget=6, chunk=3)
    arrivals = {rid: r.arrival_step for rid, r in engine.requests.items()}
    ours = reference_ttft_tpot(engine.records, arrivals)
    theirs = {m.request_id: m for m in monitoring.MetricsCollector.from_engine(engine).request_metrics()}
    assert set(ours) == set(theirs) == {0, 1, 2, 3}
    for rid, (ttft, tpot) in ours.items():
        assert ttft == theirs[rid].ttft_steps
        assert (tpot is None) == (theirs[rid].tpot_s is None)


def test_step_estimate_reference_is_the_real_engines():
    """The check's reference counts the steps of the real engines; a hand simulation must agree with them."""
    from cblab_teach.checks.ex06_static_vs_continuous import measured_steps

    assert measured_steps([4, 4, 4, 4], [12, 2, 2, 2], 2) == (14, 12)
    assert measured_steps([3], [5], 4) == (5, 5)


@pytest.mark.parametrize("name", NAMES)
def test_the_exercise_notebook_stub_fails_as_not_implemented(name):
    from pathlib import Path

    from cblab_teach.checks.__main__ import load_solution

    notebook = Path(__file__).resolve().parents[1] / "exercises" / f"{name}.ipynb"
    stub_from_notebook = load_solution(EXERCISES[name], notebook)
    result = check(name, stub_from_notebook, verbose=False)
    assert not result and result.not_implemented, result.summary
    assert "not implemented yet" in result.summary


# -- ex15: the chi-square judge is sharp enough, and no sharper -------------------------------------------------------
def test_sampler_hints_name_the_mistake():
    for wrong, words in SAMPLER_HINTS.items():
        assert words in failed("ex15_sampler", wrong).failures[0].hint, wrong.__name__


def test_chi2_survival_function_matches_the_printed_tables():
    from cblab_teach.checks.ex15_sampler import chi2_sf

    # critical values of the chi-square distribution as printed in every statistics table
    for statistic, dof, tail in [(3.841459, 1, 0.05), (9.487729, 4, 0.05), (20.515006, 5, 0.001), (6.634897, 1, 0.01)]:
        assert chi2_sf(statistic, dof) == pytest.approx(tail, rel=1e-5)
    assert chi2_sf(0.0, 3) == 1.0


def test_chi_square_pools_rare_tokens_and_scores_a_perfect_sample_zero():
    from collections import Counter

    from cblab_teach.checks.ex15_sampler import chi_square

    probs = torch.tensor([0.5, 0.3, 0.197, 0.002, 0.001], dtype=torch.float64)  # 2 + 1 expected: too rare alone
    perfect = chi_square(Counter({0: 500, 1: 300, 2: 197, 3: 2, 4: 1}), probs, 1000)
    assert perfect.statistic == pytest.approx(0.0) and perfect.dof == 2 and perfect.p_value == pytest.approx(1.0)
    skewed = chi_square(Counter({0: 700, 1: 200, 2: 100}), probs, 1000)
    assert skewed.statistic == pytest.approx(80 + 100 / 3 + 50)  # the last bin: tokens 2, 3, 4 expect 200, got 100
    assert skewed.p_value < 1e-20


def test_the_target_is_the_engines_own_sampling_distribution():
    from cblab_teach.checks.ex15_sampler import EXERCISE, target_probs
    from cblab_teach.core.request import Request, SamplingParams
    from cblab_teach.core.sampling import token_probs

    for case in EXERCISE.fixed_cases():
        if "settings" not in case.inputs:
            continue
        logits, s = torch.tensor(case.inputs["logits"]), case.inputs["settings"]
        request = Request(0, [1], 1, sampling=SamplingParams(s["temperature"], s["top_k"], s["top_p"], seed=0))
        assert torch.allclose(target_probs(logits, **s), token_probs(logits, request))
        assert torch.allclose(target_probs(logits, **s), SamplerOk.probs(logits, **s))  # and the independent one


def test_a_temperature_that_cannot_sample_is_a_typed_error_naming_it():
    from cblab_teach.checks.ex15_sampler import target_probs

    for bad in (0.0, -1.0):
        with pytest.raises(CBLabError, match=str(bad)):
            target_probs(torch.zeros(3), bad, 0, 1.0)


def _critical_value(dof: int, alpha: float) -> float:
    """The statistic whose upper tail is ``alpha`` (bisection on the survival function)."""
    from cblab_teach.checks.ex15_sampler import chi2_sf

    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi2_sf(mid, dof) > alpha else (lo, mid)
    return hi


def _noncentral_cdf(x: float, dof: int, lam: float) -> float:
    """P(X <= x) for X noncentral chi-square: a Poisson(lam / 2) mixture of central ones."""
    from cblab_teach.checks.ex15_sampler import chi2_sf

    total = 0.0
    for j in range(int(lam / 2 + 12 * math.sqrt(lam / 2 + 1) + 50)):
        weight = math.exp(-lam / 2 + j * math.log(lam / 2) - math.lgamma(j + 1)) if lam > 0 else float(j == 0)
        total += weight * (1 - chi2_sf(x, dof + 2 * j))
    return total


def miss_probability(wrong: torch.Tensor, exact: torch.Tensor, draws: int) -> float:
    """How likely ``draws`` tokens from ``wrong`` pass one case judged against ``exact``: a token outside the
    support fails at once; otherwise Pearson's statistic is about noncentral chi-square (the usual large-sample
    approximation), on the bins the check uses."""
    from cblab_teach.checks.ex15_sampler import ALPHA, MIN_EXPECTED

    outside = float(wrong[exact == 0].sum())
    if outside > 0:
        return (1 - outside) ** draws
    order = sorted((t for t in range(len(exact)) if exact[t] > 0), key=lambda t: -float(exact[t]))
    bins = [[t] for t in order if exact[t] * draws >= MIN_EXPECTED]
    rare = [t for t in order if exact[t] * draws < MIN_EXPECTED]
    if rare and (sum(float(exact[t]) for t in rare) * draws >= MIN_EXPECTED or not bins):
        bins.append(rare)
    elif rare:
        bins[-1].extend(rare)
    p = [sum(float(exact[t]) for t in b) for b in bins]
    q = [sum(float(wrong[t]) for t in b) for b in bins]
    lam = draws * sum((qi - pi) ** 2 / pi for pi, qi in zip(p, q))
    return _noncentral_cdf(_critical_value(len(bins) - 1, ALPHA), len(bins) - 1, lam)


def test_every_planted_mistake_fails_every_time_not_by_luck():
    """Fixed seeds make each run of the check the same, so passing the wrong answers once proves little: here,
    for each mistake in the distribution, some fixed case rejects it with probability above 1 - 1e-12 whatever
    the seed. (The seed mistakes fail by construction: two samplers seeded alike drawing in turns.)"""
    from cblab_teach.checks.ex15_sampler import EXERCISE, target_probs

    cases = [c.inputs for c in EXERCISE.fixed_cases() if "settings" in c.inputs]
    mistakes = [SamplerTemperatureAfterSoftmax, SamplerTopKDropsTies, SamplerTopPOneTooFew, SamplerTopPOneTooMany]
    for wrong in [*mistakes, SamplerTopPNotRenormalised, SamplerDrawsUnnormalised]:
        misses = []
        for x in cases:
            logits = torch.tensor(x["logits"])
            if wrong is SamplerDrawsUnnormalised:
                probs = wrong.unnormalised(logits, **x["settings"])
            else:
                probs = wrong.probs(logits, **x["settings"], **wrong.mistake)
            misses.append(miss_probability(probs, target_probs(logits, **x["settings"]), x["draws"]))
        assert min(misses) < 1e-12, f"{wrong.__name__} may slip through: {misses}"
    exact = target_probs(torch.tensor(cases[0]["logits"]), **cases[0]["settings"])
    assert miss_probability(exact, exact, cases[0]["draws"]) == pytest.approx(1 - 1e-6)  # the right one passes
