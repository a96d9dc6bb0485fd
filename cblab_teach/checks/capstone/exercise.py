"""The capstone exercise: cases, the judge, and the last divergence for :func:`show_divergence`."""

from __future__ import annotations

import random
from typing import Any

from ...core.engine import Engine
from .._base import Case, Exercise, Mismatch, _not_implemented
from .divergence import Divergence, divergence_figure, find_divergence
from .run import Run, Verdict, drive, kv_leftovers, play, safe_step_error
from .scenarios import Scenario, fixed_scenarios, fresh_model, hf_output, random_scenario

_last: list[Divergence] = []  # the latest divergence found, for show_divergence()


def show_divergence():
    """Draw the masks of the last failed capstone case's first wrong step: yours beside the reference."""
    if not _last:
        print("no divergence recorded: run check('capstone_engine', YourEngine) first (a passing engine has none)")
        return None
    return divergence_figure(_last[-1])


class CapstoneEngine(Exercise):
    name = "capstone_engine"
    title = "Capstone: your own continuous-batching engine"
    entry = "MyEngine"
    course = "07_engine_proven_correct"
    num_random = 2
    hint = (
        "step() = plan (decode first, then chunked prefill, within the budget) -> admit -> kv.ensure -> "
        "build the ragged batch -> one forward -> greedy sample -> commit (num_computed, tokens, finish, free KV)"
    )

    @property
    def reference(self):
        return Engine

    def fixed_cases(self) -> list[Case]:
        return [Case(name, {"scenario": sc}) for name, sc in fixed_scenarios().items()]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        return {"scenario": random_scenario(rng)}

    def describe(self, case: Case) -> str:
        return case.inputs["scenario"].describe()

    def judge(self, learner, case: Case) -> Mismatch | None:
        scenario: Scenario = case.inputs["scenario"]
        model = fresh_model()
        run = Run(learner(model, scenario.config()))
        try:
            play(run, model, scenario)
        except Verdict as v:
            return Mismatch(v.expected, v.got, v.hint)
        except Exception as error:
            if _not_implemented(error) is not None:
                raise
            left = kv_leftovers(run.engine)
            hint = f"your engine raised it after {len(run.steps)} steps"
            if left and _finished_hold_kv(run):
                hint = (
                    "blocks never freed: free a request's KV the step it finishes, or the pool runs dry (" + left + ")"
                )
            return Mismatch("every request served", safe_step_error(error), hint)
        wrong = self._wrong_outputs(run, scenario)
        if wrong:
            return self._explain(run, scenario, *wrong)
        if run.engine.has_unfinished():
            return Mismatch("has_unfinished() False at the end", "True", "a finished request is still queued")
        left = kv_leftovers(run.engine)
        if left:
            return Mismatch(
                "every KV block back in the pool once all requests finished",
                left,
                "blocks never freed: call kv.free(request_id) the step a request finishes",
            )
        return None

    @staticmethod
    def _wrong_outputs(run: Run, scenario: Scenario) -> tuple[int, int, list, list] | None:
        for index, (join, rid) in enumerate(zip(scenario.joins_in_order(), run.ids)):
            want = list(hf_output(join.prompt, join.max_new_tokens))
            got = run.engine.output(rid)
            if list(got) != want:
                return index, rid, want, list(got)
        return None

    def _explain(self, run: Run, scenario: Scenario, index: int, rid: int, want: list, got: list) -> Mismatch:
        # the tokens each batch must carry: the prompt, then what the engine itself sampled (a wrong sample is
        # the forward's fault, not the batch's)
        full = {r: list(j.prompt) + list(run.engine.output(r)) for j, r in zip(scenario.joins_in_order(), run.ids)}
        try:
            reference = drive(Engine, scenario, audit=False)
        except Exception:  # the reference is only for the picture; never let it hide the learner's failure
            reference = None
        found = find_divergence(run, full, reference)
        if found is None:
            hint = (
                "every batch and mask is right, so the difference comes after the mask: attention numerics "
                "(mask before softmax, scale by sqrt(head_dim)), the logits row sampled (each chunk's last "
                "row), or commit"
            )
        else:
            _last.append(found)
            del _last[:-1]
            same = (
                "the reference engine planned this step the same way"
                if found.same_plan_as_engine
                else "the reference engine planned this step differently; the reference mask is the library's "
                "ragged causal mask of your batch"
            )
            hint = (
                f"{found.hint}\nfirst wrong step: {found.step}: {found.what} ({same})\n{found.text()}\n"
                "show_divergence() draws both masks side by side"
            )
        return Mismatch(f"request {rid} (Hugging Face generate): {want}", f"{got}", hint)


def _finished_hold_kv(run: Run) -> bool:
    kv = getattr(run.engine, "kv", None)
    held = set(getattr(kv, "lengths", {}) or {})
    done = {rid for rid in run.ids if _is_done(run.engine, rid)}
    return bool(held & done)


def _is_done(engine, rid: int) -> bool:
    try:
        request = engine.requests[rid]
        return bool(request.is_finished)
    except Exception:
        return False


EXERCISE = CapstoneEngine()
