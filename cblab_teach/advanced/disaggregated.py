"""Disaggregated prefill and decode: one engine computes prompts, another generates, K/V moves between them.

In one engine, a long prompt's prefill chunks share every step with the decoders, so each
decoder's next token waits for them: time per output token (TPOT) jumps whenever a long
prompt arrives. Disaggregation (DistServe, Zhong et al., OSDI 2024, "DistServe:
Disaggregating Prefill and Decoding for Goodput-optimized Large Language Model Serving";
vLLM's "Disaggregated Prefilling", docs.vllm.ai/en/latest/features/disagg_prefill/) gives
the two phases their own engines, each with its own KV pool:

1. a request is prefilled on the **prefill engine** until its first token is sampled;
2. its K/V is copied to the **decode engine**, block by block, and the bytes are counted;
3. it decodes there, in steps that never carry a prefill chunk.

The tokens are the same as one :class:`~cblab_teach.core.engine.Engine`: the decode engine
continues from exactly the K/V and the first token the prefill engine produced (tests check
it token for token, and against Hugging Face ``generate``). The price is the transfer
(``bytes_transferred``) and a second pool. vLLM's page says the same: it tunes TTFT and
tail inter-token latency separately; it does not raise throughput.

:class:`DisaggregatedServer` runs both engines in one process, one step each per tick;
:func:`run_two_processes` runs them in two ``torch.distributed`` (gloo) processes, one
engine per process, the K/V sent with ``send`` / ``recv``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist

from ..core.config import EngineConfig
from ..core.engine import Engine, StepRecord
from ..core.intake import generate_args
from ..core.kv_transfer import KVBlock, PrefilledRequest
from ..core.request import SamplingParams
from ..core.scheduler import is_decoding
from ..errors import DuplicateRequestError, RequestError, UnknownRequestError
from ..model.tiny_lm import TinyLM
from .processes import init_group, launch, scratch_folder


@dataclass(frozen=True)
class Transfer:
    """One request's K/V moving from the prefill pool to the decode pool."""

    request_id: int
    blocks: int
    tokens: int
    nbytes: int
    prefill_step: int  # the prefill engine's step that sampled the first token
    decode_step: int | None = None  # decode engine steps done when it arrived (None: still in flight)


class DisaggregatedServer:
    """A prefill engine and a decode engine, each with its own KV pool, sharing one model's weights."""

    def __init__(
        self, model: TinyLM, prefill_config: EngineConfig | None = None, decode_config: EngineConfig | None = None
    ) -> None:
        self.prefill = Engine(model, prefill_config)
        self.decode = Engine(model, decode_config)
        self.in_flight: deque[PrefilledRequest] = deque()  # exported, waiting for room on the decode side
        self.transfers: dict[int, Transfer] = {}
        self._ids: list[int] = []
        self._next_id = 0

    # -- requests ---------------------------------------------------------------------------------
    def add_request(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int = 16,
        request_id: int | None = None,
        sampling: SamplingParams | None = None,
        priority: int = 0,
        eos_token_id: int | None = None,
        adapter: str | None = None,
    ) -> int:
        """Queue a request on the prefill engine; it must also fit the decode engine, where it ends (and both
        engines need its adapter: add it to each with ``server.prefill.add_adapter`` and ``server.decode...``)."""
        rid = self._next_id if request_id is None else request_id
        if isinstance(rid, int) and rid in self._ids:
            raise DuplicateRequestError(f"request id {rid} is already in use")
        options = dict(request_id=rid, sampling=sampling, priority=priority, eos_token_id=eos_token_id, adapter=adapter)
        req = self.decode.check_request(prompt_ids, max_new_tokens, **options)  # raises; changes nothing
        rid = self.prefill.add_request(req.prompt_ids, req.max_new_tokens, **options)
        self._ids.append(rid)
        self._next_id = max(self._next_id, rid + 1)
        return rid

    def has_unfinished(self) -> bool:
        return self.prefill.has_unfinished() or bool(self.in_flight) or self.decode.has_unfinished()

    def output(self, request_id: int) -> list[int]:
        """Generated ids so far, wherever the request is now."""
        for engine in (self.decode, self.prefill):
            if request_id in engine.requests:
                return engine.output(request_id)
        for h in self.in_flight:
            if h.request_id == request_id:
                return list(h.output_ids)
        raise UnknownRequestError(f"unknown request id {request_id!r}")

    # -- the hand-over ------------------------------------------------------------------------------
    def ready_ids(self) -> list[int]:
        """Requests on the prefill engine whose first token is sampled: the next step would decode them."""
        return [r.request_id for r in self.prefill.running if is_decoding(r)]

    def export_ready(self) -> list[PrefilledRequest]:
        """Take every ready request's K/V out of the prefill pool (freeing it there) and put it in flight."""
        out = []
        step = len(self.prefill.records) - 1
        for rid in self.ready_ids():
            h = self.prefill.export_prefilled(rid)
            self.transfers[rid] = Transfer(rid, len(h.blocks), h.num_tokens, h.nbytes, step)
            self.in_flight.append(h)
            out.append(h)
        return out

    def import_in_flight(self, arrived: Callable[[PrefilledRequest], bool] | None = None) -> list[int]:
        """Move in-flight requests into the decode engine, oldest first, while it has room (and ``arrived``).
        A hand-over leaves the queue only once its import succeeded: a refused one is never lost."""
        moved = []
        while self.in_flight and self.decode.can_import(self.in_flight[0]):
            if arrived is not None and not arrived(self.in_flight[0]):
                break
            h = self.in_flight[0]
            self.decode.import_prefilled(h)
            self.in_flight.popleft()
            self.transfers[h.request_id] = replace(self.transfers[h.request_id], decode_step=len(self.decode.records))
            moved.append(h.request_id)
        return moved

    def step(self) -> tuple[StepRecord | None, StepRecord | None]:
        """One tick: a prefill step, the hand-over, a decode step (each only if its engine has work)."""
        if not self.has_unfinished():
            raise RequestError("nothing to run: every request has finished; add_request() first")
        pre = self.prefill.step() if self.prefill.has_unfinished() else None
        self.export_ready()
        self.import_in_flight()
        dec = self.decode.step() if self.decode.has_unfinished() else None
        if pre is None and dec is None:
            raise RequestError(f"no progress: {len(self.in_flight)} requests in flight do not fit the decode pool")
        return pre, dec

    def run(self) -> None:
        while self.has_unfinished():
            self.step()

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int] = 16,
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[list[int]]:
        """Serve all prompts; generated ids in input order (the same as ``Engine.generate``)."""
        ids = [self.add_request(p, m, sampling=s) for p, m, s in zip(*generate_args(prompts, max_new_tokens, sampling))]
        self.run()
        return [self.output(i) for i in ids]

    # -- what moved ------------------------------------------------------------------------------------
    @property
    def bytes_transferred(self) -> int:
        return sum(t.nbytes for t in self.transfers.values())

    @property
    def blocks_transferred(self) -> int:
        return sum(t.blocks for t in self.transfers.values())

    @property
    def records(self) -> dict[str, list[StepRecord]]:
        """Both engines' StepRecords, for the timeline view (``compare_timelines(prefill, decode)``)."""
        return {"prefill": self.prefill.records, "decode": self.decode.records}


# -- the same across two processes -----------------------------------------------------------------------
@dataclass
class TwoProcessResult:
    """What :func:`run_two_processes` measured; bytes are of the K/V tensors actually sent."""

    outputs: list[list[int]]
    bytes_sent: int
    blocks_sent: int
    requests_sent: int
    prefill_records: list[StepRecord] = field(repr=False)
    decode_records: list[StepRecord] = field(repr=False)
    seconds: float = 0.0  # wall time, process start-up included


def _send_handoff(h: PrefilledRequest, dst: int) -> int:
    """The request's state as one object, then each block's K and V as tensors; returns K/V bytes sent."""
    meta = replace(h, blocks=[])
    shapes = [(b.start, tuple(b.k.shape), b.k.dtype) for b in h.blocks]
    dist.send_object_list([meta, shapes], dst=dst)
    for b in h.blocks:
        dist.send(b.k.contiguous(), dst=dst)
        dist.send(b.v.contiguous(), dst=dst)
    return h.nbytes


def _recv_handoff(src: int) -> PrefilledRequest:
    box: list = [None, None]
    dist.recv_object_list(box, src=src)
    meta, shapes = box
    blocks = []
    for start, shape, dtype in shapes:
        k, v = torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
        dist.recv(k, src=src)
        dist.recv(v, src=src)
        blocks.append(KVBlock(start, k, v))
    return replace(meta, blocks=blocks)


def _prefill_rank(engine: Engine, folder: str) -> None:
    """Rank 0: prefill; after each step send a header (requests ready, done?) and the ready requests."""
    sent = blocks = requests = 0
    while True:
        if engine.has_unfinished():
            engine.step()
        ready = [engine.export_prefilled(r.request_id) for r in list(engine.running) if is_decoding(r)]
        done = not engine.has_unfinished()
        dist.send(torch.tensor([len(ready), int(done)]), dst=1)
        for h in ready:
            sent += _send_handoff(h, dst=1)
            blocks += len(h.blocks)
            requests += 1
        if done:
            break
    finished = {rid: engine.output(rid) for rid in engine.requests}  # done at their first token (or EOS)
    result = {"records": engine.records, "finished": finished, "sent": sent, "blocks": blocks, "requests": requests}
    torch.save(result, os.path.join(folder, "prefill.pt"))


def _decode_rank(engine: Engine, folder: str) -> None:
    """Rank 1: receive what is ready each tick, import what fits, decode one step."""
    queue: deque[PrefilledRequest] = deque()
    prefill_done = False
    while not prefill_done or queue or engine.has_unfinished():
        if not prefill_done:
            header = torch.empty(2, dtype=torch.long)
            dist.recv(header, src=0)
            queue.extend(_recv_handoff(src=0) for _ in range(int(header[0])))
            prefill_done = bool(header[1])
        while queue and engine.can_import(queue[0]):
            engine.import_prefilled(queue.popleft())
        if engine.has_unfinished():
            engine.step()
        elif queue and prefill_done:
            raise RequestError(f"request {queue[0].request_id} does not fit the empty decode pool")
    outputs = {rid: engine.output(rid) for rid in engine.requests}
    torch.save({"records": engine.records, "outputs": outputs}, os.path.join(folder, "decode.pt"))


def _worker(rank: int, folder: str, timeout_s: float) -> None:
    torch.set_num_threads(1)  # two processes share the machine's cores
    init_group(rank, 2, folder, timeout_s)
    try:
        job = torch.load(os.path.join(folder, "job.pt"), weights_only=False)
        model = TinyLM(job["model_config"])
        model.load_state_dict(job["state_dict"])
        if rank == 0:
            engine = Engine(model, job["prefill_config"])
            for rid, (prompt, n, s) in enumerate(job["requests"]):
                engine.add_request(prompt, n, request_id=rid, sampling=s)
            _prefill_rank(engine, folder)
        else:
            _decode_rank(Engine(model, job["decode_config"]), folder)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_two_processes(
    model: TinyLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int] = 16,
    prefill_config: EngineConfig | None = None,
    decode_config: EngineConfig | None = None,
    sampling: SamplingParams | Sequence[SamplingParams] | None = None,
    timeout_s: float = 120.0,
) -> TwoProcessResult:
    """Prefill in process 0, decode in process 1 (gloo), K/V sent block by block; outputs in input order.

    The ranks move in lockstep: after each prefill step rank 0 sends a header (how many requests are
    ready, whether it is done) and those requests; rank 1 receives, imports what fits, and takes one
    decode step. That shows the transport (what crosses the process boundary, and that nothing else
    is needed to continue); it does not overlap the two engines in time, which the benchmark
    (``benchmarks/bench_disaggregated.py``) models with a clock per engine.
    """
    prefill_config, decode_config = prefill_config or EngineConfig(), decode_config or EngineConfig()
    prompts, lengths, params = generate_args(prompts, max_new_tokens, sampling)
    n = len(prompts)
    check = DisaggregatedServer(model, prefill_config, decode_config)  # validate here, before any process starts
    requests = []
    for p, m, s in zip(prompts, lengths, params):
        rid = check.add_request(p, m, sampling=s)
        requests.append((check.prefill.request(rid).prompt_ids, m, s))
    start = time.perf_counter()
    with scratch_folder("cblab_disagg_") as folder:
        job = dict(
            model_config=model.config,
            state_dict={k: v.cpu() for k, v in model.state_dict().items()},
            prefill_config=replace(prefill_config, device="cpu"),
            decode_config=replace(decode_config, device="cpu"),
            requests=requests,
        )
        torch.save(job, os.path.join(folder, "job.pt"))
        launch(_worker, (folder, timeout_s), 2, timeout_s, name="run_two_processes")
        pre = torch.load(os.path.join(folder, "prefill.pt"), weights_only=False)
        dec = torch.load(os.path.join(folder, "decode.pt"), weights_only=False)
    done = {**pre["finished"], **dec["outputs"]}
    return TwoProcessResult(
        outputs=[done[rid] for rid in range(n)],
        bytes_sent=pre["sent"],
        blocks_sent=pre["blocks"],
        requests_sent=pre["requests"],
        prefill_records=pre["records"],
        decode_records=dec["records"],
        seconds=time.perf_counter() - start,
    )
