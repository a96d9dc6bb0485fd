"""A request: token ids in, token ids out, and how far its KV has got.

Like vLLM's V1 scheduler, a request only tracks ``num_computed`` (tokens whose
K/V are stored). "Prefill" and "decode" are just how far it is behind:
while ``num_computed < len(prompt)`` it is prefilling; afterwards exactly one
token (the last one it generated) waits to be fed back.
"""

from __future__ import annotations

import enum
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..errors import RequestError


class RequestState(str, enum.Enum):
    WAITING = "waiting"  # not admitted yet: no KV
    PREFILL = "prefill"  # admitted, prompt partly computed
    DECODE = "decode"  # prompt done, generating one token per step
    FINISHED = "finished"


# Below this temperature a request is greedy: dividing logits by 1e-320 overflows the softmax to NaN. vLLM's
# sampler uses the same threshold (``_SAMPLING_EPS = 1e-5`` in vllm/v1/sample/sampler.py).
SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """Greedy when ``temperature < SAMPLING_EPS`` (0 included); otherwise seeded sampling: the token at position
    ``t`` draws on noise keyed by ``(seed, t)`` (``core/sampling.py``), so the same seed gives the same tokens in
    any batch. The seed is an int: a str's hash changes from one process to the next."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


@dataclass(eq=False)
class Request:
    request_id: int
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    eos_token_id: int | None = None
    priority: int = 0  # smaller runs first under the "priority" policy (as in vLLM)
    arrival: int = 0  # arrival order, the tie-breaker everywhere
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    state: RequestState = RequestState.WAITING
    last_scheduled_step: int = -1  # for fair decode: least recently served goes first
    num_preemptions: int = 0
    aborted: bool = False  # stopped by Engine.abort before it finished on its own
    stopped: bool = False  # ended by Engine.finish: its caller found a stop string in its text
    arrival_time: float = 0.0  # perf_counter() when added
    arrival_step: int = 0  # engine step count when added
    token_times: list[float] = field(default_factory=list)  # perf_counter() of each generated token
    adapter: str | None = None  # LoRA adapter name (Engine.add_adapter); None: the base model
    group_size: int = 1  # sequences sharing this prompt (Engine.add_request_group), this one included
    forks: list[int] = field(default_factory=list)  # ids that fork from it at its first sample, sharing its KV

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def prefill_pos(self) -> int:
        """How much of the prompt has its K/V stored."""
        return min(self.num_computed, self.prompt_len)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """``all_ids[start:end]`` without building ``all_ids`` (a decode step needs one token of it)."""
        n = len(self.prompt_ids)
        if end <= n:
            return self.prompt_ids[start:end]
        if start >= n:
            return self.output_ids[start - n : end - n]
        return self.prompt_ids[start:] + self.output_ids[: end - n]

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens whose K/V still has to be computed before the next sample."""
        return self.num_tokens - self.num_computed

    @property
    def max_total_tokens(self) -> int:
        """Worst-case KV footprint: prompt plus every token it may generate but the last."""
        return self.prompt_len + self.max_new_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.state is RequestState.FINISHED

    @property
    def finish_reason(self) -> str | None:
        """Why it ended, in OpenAI's words: "stop" (end token or a stop rule), "length" (max_new_tokens), "abort"."""
        if not self.is_finished:
            return None
        if self.aborted:
            return "abort"
        ended_by_eos = bool(self.output_ids) and self.output_ids[-1] == self.eos_token_id
        return "stop" if self.stopped or ended_by_eos else "length"

    def append_token(self, token_id: int) -> None:
        self.output_ids.append(token_id)
        if len(self.output_ids) >= self.max_new_tokens or token_id == self.eos_token_id:
            self.state = RequestState.FINISHED
        else:
            self.state = RequestState.DECODE


def token_ids(prompt_ids: Iterable, owner: str) -> list[int]:
    """The prompt as a list of Python ints, or a :class:`RequestError` naming ``owner`` and the first bad value.

    A token id is an integer: Python, numpy or a 0-d integer torch tensor. ``int()`` would truncate 1.5 to 1 and
    turn "3" into 3, silently serving a different prompt."""
    if isinstance(prompt_ids, (str, bytes)):
        raise RequestError(f"{owner}: prompt_ids must be a sequence of ints, got {prompt_ids!r}")
    try:
        items = list(prompt_ids)
    except TypeError as e:
        raise RequestError(f"{owner}: prompt_ids must be a sequence of ints, got {prompt_ids!r}") from e
    out = []
    for index, t in enumerate(items):
        if isinstance(t, torch.Tensor) and t.ndim == 0 and not (t.is_floating_point() or t.is_complex()):
            t = t.item() if t.dtype != torch.bool else t
        if not isinstance(t, numbers.Integral) or isinstance(t, bool):
            raise RequestError(
                f"{owner}: token ids must be integers, got {t!r} ({type(t).__name__}) at prompt_ids[{index}]"
            )
        out.append(int(t))
    return out
