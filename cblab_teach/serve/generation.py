"""One HTTP request's side of a generation: submit it, read its token ids as they come, turn them into text.

Each choice gets its own :class:`~cblab_teach.real.TextOutput` (incremental detokenizing, stop strings); when a
stop string shows up the engine is told to finish that choice at once, so its KV is freed and it stops costing
budget. Detokenizing happens here, on the event loop, not in the engine's thread: the engine only ever sees ids.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..core.request import SamplingParams
from .api_errors import internal, refused
from .engine_loop import Accepted, EngineLoop, Failed, Rejected, Sink, Submission, Tokens
from .text_model import TextModel


@dataclass
class Delta:
    """New text of choice ``index``; ``finish_reason`` once it has ended."""

    index: int
    text: str
    finish_reason: str | None = None


class Generation:
    """Submit with :meth:`start`, iterate :meth:`deltas`, and always :meth:`close` (it aborts what is unfinished)."""

    def __init__(self, loop: EngineLoop, text_model: TextModel, prompt_ids: list[int], max_tokens: int, n: int,
                 sampling: SamplingParams, stop: list[str]) -> None:  # fmt: skip
        self.loop, self.prompt_ids, self.n = loop, prompt_ids, n
        self.max_tokens, self.sampling = max_tokens, sampling
        self.outputs = [text_model.text_output(stop) for _ in range(n)]
        self.tokens = [0] * n  # tokens received per choice
        self.finish_reasons: list[str | None] = [None] * n
        self.request_ids: list[int] = []
        self.sink: Sink | None = None

    async def start(self, arrival: float | None = None) -> None:
        """Queue the request in the engine's thread and wait for its verdict; an :class:`APIError` if refused."""
        self.sink = Sink()
        arrival = time.perf_counter() if arrival is None else arrival
        self.loop.submit(Submission(self.prompt_ids, self.max_tokens, self.n, self.sampling, arrival, self.sink))
        try:
            verdict = await self.sink.queue.get()
        except BaseException:  # cancelled while the engine decides: whatever it admits is aborted right after
            self.loop.abort(self.sink)
            raise
        if isinstance(verdict, Rejected):
            raise refused(verdict.status, verdict.message)
        assert isinstance(verdict, Accepted)
        self.request_ids = verdict.request_ids

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.finish_reasons)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Text as it becomes safe to show, per choice, until every choice has ended."""
        while not self.done:
            event = await self.sink.queue.get()
            if isinstance(event, Failed):
                raise internal(event.message)
            assert isinstance(event, Tokens)
            i, out = event.index, self.outputs[event.index]
            if self.finish_reasons[i] is not None:
                continue  # tokens after a stop string: the engine had them before it heard to finish
            piece = "".join(out.add(t) for t in event.token_ids)
            self.tokens[i] = len(out.token_ids)  # a TextOutput keeps ids up to and including a stop's last one
            if out.stopped and event.finish_reason is None:
                self.loop.finish(self.request_ids[i])
            if out.stopped or event.finish_reason is not None:
                self.finish_reasons[i] = "stop" if out.stopped else event.finish_reason
                self.loop.told(self.request_ids[i], self.finish_reasons[i])  # /metrics labels what the client sees
                piece += out.finish()
                yield Delta(i, piece, self.finish_reasons[i])
            elif piece:
                yield Delta(i, piece)

    @property
    def completion_tokens(self) -> int:
        """Generated tokens of every choice, each up to and including the one that ended it."""
        return sum(self.tokens)

    def close(self) -> None:
        """Abort whatever has not finished (the client went away, or the handler failed): its KV is freed now."""
        if self.sink is not None and not self.done:
            self.loop.abort(self.sink)
            for i, reason in enumerate(self.finish_reasons):
                if reason is None:
                    self.finish_reasons[i] = "abort"
