"""An OpenAI-compatible HTTP server over one engine: ``python -m cblab_teach serve``.

One module per idea: ``text_model`` (text to ids and back), ``protocol`` (OpenAI's request and response
shapes), ``engine_loop`` (the engine's own thread), ``generation`` (one request's stream of text), ``app`` (the
FastAPI routes), ``responses`` (JSON or server-sent events), ``metrics`` (Prometheus), ``limits`` (body size),
``api_errors`` (OpenAI-shaped errors), ``cli`` (the flags), ``background`` (a server in a thread, for tests and
notebooks), ``live`` and ``dashboard`` (``GET /dashboard``, the engine drawn as it serves). ``serve --static``
is the same app over :class:`~cblab_teach.core.static_batching.StaticServingEngine` (static batching), so one
load can be sent to both batchings. The ``loadgen_*`` modules are the other side, a client for any
OpenAI-compatible server (``python -m cblab_teach.loadgen``).

The names below load on first use, so ``python -m cblab_teach demo`` (whose parser knows the serve flags) never
imports FastAPI.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "build_app": "app",
    "serve_in_background": "background",
    "EngineLoop": "engine_loop",
    "TextModel": "text_model",
    "smollm2_text_model": "text_model",
    "tiny_text_model": "text_model",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
