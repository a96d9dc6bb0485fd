"""Every refusal as OpenAI shapes it, ``{"error": {"message", "type", "param", "code"}}``, never a traceback.

OpenAI's own API answers an unknown model with HTTP 404 and ``{"type": "invalid_request_error", "param": "model",
"code": "model_not_found"}`` (as quoted on community.openai.com/t/responses-api-streaming-bugs/1278979). The
official ``openai`` client picks its exception from the status alone (400 ``BadRequestError``, 404
``NotFoundError``, 413 ``APIStatusError``, 429 ``RateLimitError``); the body's ``message`` is what it shows.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse


class APIError(Exception):
    """A request the server refuses: the status and the body to send."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def unknown_model(name: str, served: str) -> APIError:
    return APIError(404, f"The model {name!r} does not exist; this server serves {served!r}", param="model",
                    code="model_not_found")  # fmt: skip


def refused(status: int, message: str) -> APIError:
    """The engine loop's verdict: 400 (the engine's own typed error), 429 (the waiting queue is full), 500."""
    if status == 429:
        return APIError(429, message, type_="server_busy", code="queue_full")
    return internal(message) if status >= 500 else APIError(status, message)


def too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"the request body ({size} bytes or more) is over the limit of {limit} bytes",
                    code="request_too_large")  # fmt: skip


def internal(message: str) -> APIError:
    return APIError(500, message, type_="internal_error")
