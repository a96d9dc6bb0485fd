"""A cap on request bodies, enforced before a handler reads a byte of them.

A client that declares a body over the limit (``Content-Length``) gets 413 at once; one that streams a body
without declaring it is cut off at the first chunk past the limit. Either way the server never holds more
than the limit in memory for one request.
"""

from __future__ import annotations

from .api_errors import too_large


class BodyTooLarge(Exception):
    """Raised from ``receive`` mid-body; the app's handler for it (or this middleware) answers 413."""

    def __init__(self, seen: int, limit: int) -> None:
        super().__init__(f"body over {limit} bytes")
        self.seen, self.limit = seen, limit

    def response(self):
        return too_large(self.seen, self.limit).response()


class BodySizeLimit:
    """ASGI middleware: HTTP bodies over ``max_bytes`` get an OpenAI-shaped 413."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(int(declared), self.max_bytes).response()(scope, receive, send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(seen, self.max_bytes)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as e:
            if not started:
                await e.response()(scope, receive, send)
