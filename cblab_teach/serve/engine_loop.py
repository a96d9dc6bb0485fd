"""One thread owns the engine; HTTP requests only queue work for it and read what it sends back.

The engine is not thread-safe and must not be: it is a plain loop a learner can read. So the server gives it one
thread. HTTP handlers (on the asyncio event loop) put commands in an inbox (``submit``, ``abort``, ``finish``,
``told``) and set an event; the thread drains the inbox, runs one :meth:`~cblab_teach.core.engine.Engine.step` over
everyone who is running, and hands each request's new token ids to that request's asyncio queue with
``loop.call_soon_threadsafe``. A request that arrives mid-run joins the batch at the next step: continuous
batching across HTTP clients (over a :class:`~cblab_teach.core.static_batching.StaticServingEngine`, ``serve
--static``, it waits for the next group instead). With nothing to run, the thread sleeps on the event; it never
spins.

Everything the engine decides is decided here, in its own thread: whether a request is valid
(``check_request``'s typed errors), whether the waiting queue is full, when a client's KV is freed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..core.engine import Engine
from ..core.request import SamplingParams
from ..core.static_batching import StaticServingEngine
from ..errors import CBLabError
from .live import LiveView
from .metrics import ServerMetrics

log = logging.getLogger(__name__)


@dataclass
class Accepted:
    """The engine queued the request: one engine request id per choice."""

    request_ids: list[int]


@dataclass
class Rejected:
    """The engine refused the request: ``status`` 400 (its own typed error), 429 (the waiting queue is full), or
    500 (a bug)."""

    status: int
    message: str


@dataclass
class Tokens:
    """New token ids of choice ``index``; ``finish_reason`` is set on its last event."""

    index: int
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Failed:
    """The engine itself raised while stepping (a bug): the request ends with this message."""

    message: str


class Sink:
    """One HTTP request's mailbox: the engine thread posts to it, the request's coroutine reads it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def post(self, item) -> None:
        """Called from the engine thread."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


@dataclass
class Submission:
    prompt_ids: list[int]
    max_tokens: int
    n: int
    sampling: SamplingParams
    arrival: float  # time.perf_counter() when the HTTP request arrived: TTFT and E2E count from here
    sink: Sink


@dataclass
class _Active:
    sink: Sink
    index: int
    arrival: float
    sent: int = 0  # output ids already posted


@dataclass
class EngineLoop:
    """Runs ``engine`` in a background thread for as long as the server lives. Continuous (:class:`Engine`) or
    static (:class:`StaticServingEngine`), it is driven through the same public calls."""

    engine: Engine | StaticServingEngine
    metrics: ServerMetrics
    eos_token_id: int | None = None
    max_waiting: int = 256
    _inbox: deque = field(default_factory=deque)
    _wake: threading.Event = field(default_factory=threading.Event)
    _stopping: bool = False
    _thread: threading.Thread | None = None
    _active: dict[int, _Active] = field(default_factory=dict)
    _untold: dict[int, Sink] = field(default_factory=dict)  # ended in the engine, outcome not yet told the client
    live: LiveView = field(default_factory=LiveView)  # what /dashboard shows, filled from this thread

    # -- the HTTP side: any thread may call these ------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cblab-engine-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, submission: Submission) -> None:
        self._command("submit", submission)

    def abort(self, sink: Sink) -> None:
        """The client went away: end every request of ``sink`` and free its KV now. Commands run in order, so a
        submission still in the inbox is admitted first and aborted right after."""
        self._command("abort", sink)

    def finish(self, request_id: int) -> None:
        """A stop string ended this request's text: end it as done and free its KV."""
        self._command("finish", request_id)

    def told(self, request_id: int, finish_reason: str) -> None:
        """The client was told this request's ``finish_reason``: ``/metrics`` counts the outcome under that label.
        (Only the text layer knows that a stop string ended a request the engine ended for its length.)"""
        self._command("told", (request_id, finish_reason))

    def _command(self, kind: str, payload) -> None:
        self._inbox.append((kind, payload))  # deque.append is atomic: no lock needed
        self._wake.set()

    # -- the engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # cleared before draining: a command queued after this sets it again
            self._drain()
            if self.engine.has_unfinished():
                self._step()
            else:
                self._publish_state()
                self._wake.wait()

    def _drain(self) -> None:
        while self._inbox:
            kind, payload = self._inbox.popleft()
            try:
                if kind == "submit":
                    self._admit(payload)
                    continue
                if kind == "told":
                    if self._untold.pop(payload[0], None) is not None:
                        self.metrics.request_outcome(payload[1])
                    continue
                if kind == "abort":
                    for rid in [rid for rid, a in self._active.items() if a.sink is payload]:
                        self.engine.abort(rid)
                    for rid in [rid for rid, sink in self._untold.items() if sink is payload]:
                        del self._untold[rid]  # it ended, but its client left before reading how
                        self.metrics.request_outcome("abort")
                elif payload in self._active:
                    self.engine.finish(payload)
                self._publish_tokens()
            except Exception:  # never lose the loop to one command
                log.exception("engine loop: %s failed", kind)

    def _admit(self, sub: Submission) -> None:
        engine, eos = self.engine, self.eos_token_id
        try:
            engine.check_request(sub.prompt_ids, sub.max_tokens, sampling=sub.sampling, eos_token_id=eos)
            if len(engine.waiting) >= self.max_waiting:
                sub.sink.post(Rejected(429, f"the server has {len(engine.waiting)} requests waiting "
                                            f"(--max-waiting {self.max_waiting}); retry later"))  # fmt: skip
                return
            if sub.n == 1:
                rids = [engine.add_request(sub.prompt_ids, sub.max_tokens, sampling=sub.sampling, eos_token_id=eos)]
            else:
                rids = engine.add_request_group(sub.prompt_ids, sub.n, sub.max_tokens, sub.sampling,
                                                eos_token_id=eos)  # fmt: skip
        except CBLabError as e:  # the engine's own verdict on the request: a client error
            sub.sink.post(Rejected(400, str(e)))
            return
        except Exception as e:  # a bug: the client still gets an answer, and the loop goes on
            log.exception("engine loop: admitting a request failed")
            sub.sink.post(Rejected(500, f"the engine failed to admit the request: {type(e).__name__}"))
            return
        for i, rid in enumerate(rids):
            self._active[rid] = _Active(sub.sink, i, sub.arrival)
        sub.sink.post(Accepted(rids))

    def _step(self) -> None:
        try:
            self.live.step(self.engine.step())
        except Exception as e:  # a bug in the engine: fail the requests in flight, keep serving
            log.exception("engine step failed")
            for rid, active in list(self._active.items()):
                active.sink.post(Failed(f"the engine failed: {type(e).__name__}: {e}"))
                try:
                    self.engine.abort(rid)
                except CBLabError:
                    pass
            self._active.clear()
        self._publish_tokens()

    def _publish_tokens(self) -> None:
        """Each active request's new ids to its sink; finished ones leave with their metrics recorded."""
        now = time.perf_counter()
        for rid, active in list(self._active.items()):
            req = self.engine.request(rid)
            new = req.output_ids[active.sent :]
            if not new and not req.is_finished:
                continue
            active.sent += len(new)
            active.sink.post(Tokens(active.index, list(new), req.finish_reason))
            if req.is_finished:
                del self._active[rid]
                if req.finish_reason == "abort":
                    self.metrics.request_outcome("abort")
                else:  # counted when the client is told how it ended (told), or that it left first (abort)
                    self.metrics.request_done(active.arrival, req.token_times, req.prompt_len, now)
                    self._untold[rid] = active.sink
                self.live.request(rid, req.finish_reason, active.arrival, req.token_times, req.prompt_len)
                self.engine.forget(rid)  # served: a server that runs for days keeps no request it has answered
        self._publish_state()

    def _publish_state(self) -> None:
        usage = self.engine.kv.usage()
        self.metrics.set_state(len(self.engine.running), len(self.engine.waiting),
                               usage.reserved_slots / usage.total_slots)  # fmt: skip
