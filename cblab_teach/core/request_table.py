"""Requests by id: the lookup and the forgetting that every engine a server drives needs, written once."""

from __future__ import annotations

from ..errors import RequestError, UnknownRequestError
from .request import Request


class RequestTable:
    """Mixin over ``self.requests`` (id -> Request)."""

    requests: dict[int, Request]

    def request(self, request_id: int) -> Request:
        try:
            return self.requests[request_id]
        except (KeyError, TypeError):
            raise UnknownRequestError(f"unknown request id {request_id!r}") from None

    def forget(self, request_id: int) -> Request:
        """Drop a finished request from ``requests`` (a server must not keep every request it ever served); its
        id is free again. A request still running or waiting is an error: abort or finish it first."""
        req = self.request(request_id)
        if not req.is_finished:
            raise RequestError(f"request {request_id} has not finished; abort() or finish() it before forget()")
        return self.requests.pop(request_id)
