"""Exercise 13: verify speculative drafts in one forward and clean up the rejected KV.

::

    verify(drafts, target_best) -> (tokens_to_append, kv_slots_to_truncate)

The step fed ``[last token, d_1 .. d_k]`` and wrote ``k + 1`` K/V slots;
``target_best[i]`` is the target model's greedy token after position ``i`` of
that chunk (``k + 1`` of them). Keep the drafts while ``d_{i+1} ==
target_best[i]``; at the first disagreement (or after all ``k``) append the
target's own token, the *bonus*: a step yields 1 to ``k + 1`` tokens. The K/V
of rejected drafts is garbage (computed after a wrong token): truncate those
slots. The reference is :func:`cblab_teach.core.sampling.accept_drafts` and
the engine's commit rule (``num_computed = end - k + accepted``).
"""

from __future__ import annotations

import random
from typing import Any

from ..core.sampling import accept_drafts
from ._base import Case, Exercise, Mismatch


def reference_verify(drafts: list[int], target_best: list[int]) -> tuple[list[int], int]:
    """The engine's own rule: accept_drafts, then keep KV up to the last accepted draft."""
    tokens = accept_drafts(list(target_best), tuple(drafts))
    accepted = len(tokens) - 1
    # Engine._commit: chunk [start, start + 1 + k) was written; num_computed = end - k + accepted.
    start = 100
    end = start + 1 + len(drafts)
    num_computed = end - len(drafts) + accepted
    return tokens, end - num_computed


def _agree(prefix: int, k: int, rng: random.Random, vocab: int = 50) -> dict[str, Any]:
    """Drafts of which the first ``prefix`` agree with the target."""
    target = [rng.randrange(vocab) for _ in range(k + 1)]
    drafts = target[:prefix] + [(t + 1 + rng.randrange(vocab - 1)) % vocab for t in target[prefix:k]]
    return {"drafts": drafts, "target_best": target}


class SpeculativeVerify(Exercise):
    name = "ex13_speculative_verify"
    title = "Verifying speculative drafts: accepted tokens, bonus token, KV to truncate"
    entry = "verify"
    course = "13_speculative_decoding"
    hint = (
        "walk i = 0..k-1 while drafts[i] == target_best[i]; n = that count; append drafts[:n] + [target_best[n]]; "
        "the k - n slots written for rejected drafts are truncated"
    )

    @property
    def reference(self):
        return reference_verify

    def fixed_cases(self) -> list[Case]:
        return [
            Case("all drafts accepted (bonus token too)", {"drafts": [5, 6, 7], "target_best": [5, 6, 7, 8]}),
            Case("first draft rejected", {"drafts": [5, 6, 7], "target_best": [9, 6, 7, 8]}),
            Case("one in the middle rejected", {"drafts": [5, 6, 7, 1], "target_best": [5, 6, 2, 1, 3]}),
            Case("agreement after a rejection does not count", {"drafts": [4, 9, 4], "target_best": [4, 0, 4, 4]}),
            Case("no drafts: plain decode", {"drafts": [], "target_best": [11]}),
            Case("one draft, accepted", {"drafts": [3], "target_best": [3, 3]}),
            Case("repeated token", {"drafts": [2, 2, 2, 2], "target_best": [2, 2, 2, 5, 2]}),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        k = rng.randint(0, 6)
        return _agree(rng.randint(0, k), k, rng, vocab=rng.choice([3, 50]))

    def judge(self, learner, case: Case) -> Mismatch | None:
        x = case.inputs
        expected = self.reference(**x)
        got = learner(list(x["drafts"]), list(x["target_best"]))
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Mismatch(expected, got, "return a pair: (tokens to append, KV slots to truncate)")
        got = (list(got[0]), got[1])
        if got == (expected[0], expected[1]):
            return None
        return Mismatch(expected, tuple(got), _diagnose(got, expected, x))


def _diagnose(got: tuple[list, Any], expected: tuple[list[int], int], x: dict[str, Any]) -> str:
    tokens, drop = got
    want, want_drop = expected
    drafts, target = x["drafts"], x["target_best"]
    n = len(want) - 1
    if tokens == want:
        if drop == want_drop + 1:
            return "the slot of the last accepted token is kept: truncate only the k - n rejected drafts"
        if drop == want_drop - 1 or drop == len(drafts) - len(want):
            return "every rejected draft wrote a K/V slot: truncate all k - n of them"
        return f"{len(drafts)} drafts, {n} accepted: truncate {want_drop} slots"
    shifted = 0
    while shifted < len(drafts) and drafts[shifted] == target[shifted + 1]:
        shifted += 1
    if tokens[:-1] == drafts[:shifted] and tokens != want and len(tokens) == shifted + 1:
        return "drafts[i] is compared with target_best[i] (what the target predicts right after the token before it)"
    if tokens == want[:-1]:
        return "the bonus token is missing: after the agreeing drafts, append target_best[n] (the target's own pick)"
    if len(tokens) == len(want) + 1 and tokens[:n] == want[:n]:
        return "accepted one draft too many: the first draft that disagrees with target_best is rejected"
    if tokens[:n] == drafts[:n] and len(tokens) > len(want):
        return "stop at the first disagreement: later drafts were conditioned on a wrong token"
    return f"the first {n} drafts agree; append them and then target_best[{n}]"


EXERCISE = SpeculativeVerify()
