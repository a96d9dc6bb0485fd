"""The capstone: grade a learner's whole continuous-batching engine.

``check("capstone_engine", MyEngine)`` runs ``MyEngine(model, config)`` on
scenarios (dense and paged, budgets and chunk sizes down to 1, requests
joining mid-run) and holds it to Hugging Face ``generate`` token for token,
while auditing every step's plan (budget, decode first and fair, no token
skipped or computed twice, no request lost or finished twice) and the KV pool
at the end (every block returned). On a wrong output it replays the
library's :class:`~cblab_teach.core.engine.Engine` beside it and names the
first step where the two batches differ; :func:`show_divergence` draws both
masks side by side.

What the check needs from the learner's engine (the notebook says so too):

* ``add_request(prompt_ids, max_new_tokens) -> request id``, ``has_unfinished()``,
  ``output(request_id) -> list of generated ids``;
* ``step()`` returns the step's record with a ``.plan`` (a
  :class:`~cblab_teach.core.scheduler.StepPlan`), or the plan itself;
* ``step()`` runs the model exactly once, as ``model(batch, kv, ...)`` with a
  :class:`~cblab_teach.core.batch_builder.RaggedBatch` (the check watches the call);
* ``self.kv``: the KV cache, so the check can see every block come back;
* optionally ``mask(batch)``: the mask its attention uses (the library's
  engine builds ``batch_mask(batch)``), drawn when outputs diverge.
"""

from .exercise import EXERCISE, show_divergence

__all__ = ["EXERCISE", "show_divergence"]
