"""Exercise 6: how many steps do static and continuous batching need for a workload?

::

    estimate_steps(prompt_lens, new_tokens, batch_size) -> (static_steps, continuous_steps)

Both serve at most ``batch_size`` requests at once, and the budget is large
enough that a prompt is prefilled in one step (which also samples the first
token). Static batching runs each fixed batch until its longest request is
done; continuous batching refills a slot at the next step after a request
finishes. The reference runs the real engines and counts their steps:
:class:`StaticBatchingEngine` and :class:`Engine` with ``max_running=batch_size``.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from ..core.config import EngineConfig
from ..core.engine import Engine
from ..core.static_batching import StaticBatchingEngine
from ..model.config import ModelConfig
from ..model.tiny_lm import TinyLM
from ._base import Case, Exercise, Mismatch


@functools.lru_cache(maxsize=1)
def tiny_model() -> TinyLM:
    """The smallest model that runs the real engines: step counts do not depend on its size."""
    return TinyLM(ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), seed=0)


def measured_steps(prompt_lens: list[int], new_tokens: list[int], batch_size: int) -> tuple[int, int]:
    """Run both engines on the workload and count their steps."""
    model = tiny_model()
    prompts = [[(i + j) % 32 for j in range(n)] for i, n in enumerate(prompt_lens)]
    static = StaticBatchingEngine(model, batch_size=batch_size)
    static.generate(prompts, list(new_tokens))
    longest = max(prompt_lens)
    config = EngineConfig(
        max_tokens_per_step=batch_size * (longest + 1), prefill_chunk_size=longest, max_running=batch_size
    )
    continuous = Engine(model, config)
    continuous.generate(prompts, list(new_tokens))
    return len(static.records), len(continuous.records)


class StaticVsContinuous(Exercise):
    name = "ex06_static_vs_continuous"
    title = "Static vs continuous batching: a step estimate"
    entry = "estimate_steps"
    course = "02_static_vs_continuous"
    hint = (
        "static: for each batch of batch_size requests (in order), steps = its longest new_tokens; "
        "continuous: batch_size slots, each request holds the earliest free slot for new_tokens steps"
    )
    num_random = 8

    @property
    def reference(self):
        return measured_steps

    def fixed_cases(self) -> list[Case]:
        def case(name, prompt_lens, new_tokens, batch_size):
            return Case(name, {"prompt_lens": prompt_lens, "new_tokens": new_tokens, "batch_size": batch_size})

        return [
            case("one request", [5], [4], 2),
            case("equal lengths: no difference", [3, 3, 3, 3], [5, 5, 5, 5], 2),
            case("one long request holds its batch", [4, 4, 4, 4], [12, 2, 2, 2], 2),
            case("a long tail", [2, 6, 3, 5, 4, 2], [2, 3, 2, 16, 2, 3], 3),
            case("batch of one", [3, 2, 4], [3, 1, 2], 1),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        n = rng.randint(2, 9)
        return {
            "prompt_lens": [rng.randint(1, 8) for _ in range(n)],
            "new_tokens": [min(16, int(rng.paretovariate(1.0))) for _ in range(n)],  # mostly short, a few long
            "batch_size": rng.randint(1, 4),
        }

    def judge(self, learner, case: Case) -> Mismatch | None:
        expected = self.reference(**case.inputs)
        got = learner(**{k: list(v) if isinstance(v, list) else v for k, v in case.inputs.items()})
        try:
            pair = (int(got[0]), int(got[1]))
            if len(got) != 2:
                raise ValueError
        except (TypeError, ValueError, IndexError):
            return Mismatch(expected, got, "return a pair (static_steps, continuous_steps)")
        if pair == expected:
            return None
        if pair[0] != expected[0]:
            hint = "static: each batch (requests [0:b], [b:2b], ...) lasts as long as ITS longest request"
            if pair[0] - expected[0] == -(-len(case.inputs["new_tokens"]) // case.inputs["batch_size"]):
                hint = "static: the prefill step already samples the first token; a batch takes max(new_tokens) steps"
        else:
            hint = (
                "continuous: a request holds a slot for new_tokens steps (prefill samples the first), "
                "and the next request in order takes the earliest slot that frees up"
            )
        return Mismatch(expected, pair, hint)


EXERCISE = StaticVsContinuous()
