"""The HTTP layer: parse and check OpenAI requests, queue them for the engine loop, stream the results back.

Nothing here touches the engine: a handler checks the body (``protocol.py``), turns text into ids
(``text_model.py``), hands a :class:`~.generation.Generation` to the :class:`~.engine_loop.EngineLoop`, and
returns what comes back as OpenAI's JSON or server-sent events (``responses.py``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.engine import Engine
from ..core.request import SamplingParams
from ..core.static_batching import StaticServingEngine
from ..errors import CBLabError, ConfigError, RequestError
from . import protocol as p
from .api_errors import APIError, bad_request, internal, unknown_model
from .dashboard import add_dashboard
from .engine_loop import EngineLoop
from .generation import Generation
from .limits import BodySizeLimit, BodyTooLarge
from .metrics import ServerMetrics
from .responses import SSEResponse, stream, whole
from .text_model import TextModel

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt this course's models can read
CHAT_MAX_TOKENS = 512  # chat default when max_tokens is absent (vLLM's is the rest of the context; a CPU is slower)


def build_app(text_model: TextModel, engine: Engine | StaticServingEngine, max_waiting: int = 256,
              max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:  # fmt: skip
    """An OpenAI-compatible app serving ``text_model`` through ``engine`` (which it then owns).

    An :class:`Engine` batches continuously; a :class:`StaticServingEngine` (``serve --static``) batches
    statically, behind the very same routes, so one load can be sent to both."""
    if not isinstance(max_waiting, int) or max_waiting < 1:
        raise ConfigError(f"max_waiting must be an int >= 1 (waiting requests allowed), got {max_waiting!r}")
    if not isinstance(engine, (Engine, StaticServingEngine)):
        raise ConfigError(f"build_app needs an Engine or a StaticServingEngine, got {engine!r}")
    metrics = ServerMetrics(text_model.name)
    loop = EngineLoop(engine, metrics, text_model.eos_token_id, max_waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop.start()
        yield
        loop.stop()

    app = FastAPI(title="cblab-teach", lifespan=lifespan)
    app.state.engine_loop, app.state.text_model, app.state.metrics = loop, text_model, metrics
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:  # the library's verdict on input
        return bad_request(str(exc)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return internal(f"internal error: {type(exc).__name__}").response()

    async def parse(request: Request, model: type[p.SamplingFields]) -> p.SamplingFields:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise bad_request(f"the body must be a JSON object, got {type(body).__name__}")
        try:
            req = model.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "body"
            raise bad_request(f"{where}: {first['msg']} ({e.error_count()} problem(s))", param=where) from None
        if req.model is not None and req.model != text_model.name:
            raise unknown_model(req.model, text_model.name)
        return req

    def sampling(req: p.SamplingFields) -> SamplingParams:
        seed = req.seed if req.seed is not None else random.getrandbits(31)  # unseeded requests differ
        return SamplingParams(temperature=float(req.temperature), top_p=float(req.top_p), seed=seed)

    async def generate(request: Request, req: p.SamplingFields, prompt_ids: list[int], max_tokens: int,
                       kind: str, arrival: float) -> Response:  # fmt: skip
        try:
            gen = Generation(loop, text_model, prompt_ids, max_tokens, req.n, sampling(req), req.stop_list)
        except CBLabError as e:  # stop strings are checked by the text layer (real/text.py)
            raise bad_request(str(e), param="stop") from None
        await gen.start(arrival)
        if req.stream:
            return SSEResponse(stream(gen, kind, text_model.name, req.include_usage), gen.close)
        return await whole(request, gen, kind, text_model.name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrival = time.perf_counter()  # TTFT and E2E count from here, parsing and tokenizing included
        req = await parse(request, p.ChatCompletionRequest)
        try:
            prompt = text_model.encode_chat([m.model_dump() for m in req.messages])
        except CBLabError as e:
            raise bad_request(str(e), param="messages") from None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(CHAT_MAX_TOKENS, text_model.max_context - len(prompt)))
        return await generate(request, req, prompt, max_tokens, "chat", arrival)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        arrival = time.perf_counter()
        req = await parse(request, p.CompletionRequest)
        try:
            prompt = text_model.encode(req.prompt)
        except CBLabError as e:
            raise bad_request(str(e), param="prompt") from None
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default for completions
        return await generate(request, req, prompt, max_tokens, "completion", arrival)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": text_model.name, "object": "model", "created": p.now(),
                                            "owned_by": "cblab-teach", "max_model_len": text_model.max_context}]}  # fmt: skip

    @app.get("/health")
    async def health() -> Response:
        if loop.alive:
            return JSONResponse({"status": "ok"})
        return APIError(503, "the engine loop is not running", type_="server_error").response()

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    batching = "static" if isinstance(engine, StaticServingEngine) else "continuous"
    add_dashboard(app, loop.live, text_model.name, batching)
    return app
