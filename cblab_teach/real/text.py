"""The text of one request as its tokens arrive: decoded, cut at a stop string, streamed in safe pieces.

Stop strings are text, so the engine (which sees ids) cannot find them: the text layer does, then asks the
engine to :meth:`~cblab_teach.core.engine.Engine.finish` the request so its KV is freed at once. vLLM splits the
work the same way (``vllm/v1/engine/detokenizer.py``): the returned text ends *before* the stop string, and while
streaming the last ``len(longest stop) - 1`` characters are held back, since they may be the start of a stop
string the next token completes. A stop token id ends the request with its own text left out, as an end-of-
sequence token does.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import RequestError
from .detokenizer import IncrementalDetokenizer


def check_stop(stop) -> tuple[str, ...]:
    """``stop`` as OpenAI's API takes it (None, one string or a list of them) as a tuple of non-empty strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, Sequence) or not all(isinstance(s, str) and s for s in items):
        raise RequestError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return tuple(items)


class TextOutput:
    """Feed it a request's new token ids; read back the text to show and whether a stop rule ended it."""

    def __init__(self, tokenizer, stop=None, stop_token_ids: Sequence[int] = ()) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stop = check_stop(stop)
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.hold = max((len(s) for s in self.stop), default=1) - 1  # chars that may start a stop string
        self.text = ""  # everything decoded so far, cut at the stop string once one is found
        self.sent = 0  # characters of text already returned
        self.token_ids: list[int] = []  # ids up to and including the one that stopped it
        self.stop_reason: str | int | None = None  # the stop string or stop token id that ended it

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def add(self, token_id: int) -> str:
        """The new text safe to show; "" if nothing is, or once stopped (tokens after a stop are ignored)."""
        if self.stopped:
            return ""
        self.token_ids.append(int(token_id))
        if token_id in self.stop_token_ids:
            self.stop_reason = int(token_id)
            return self._release()
        piece = self.detokenizer.add(token_id)
        self._append(piece)
        return self._release()

    def finish(self) -> str:
        """The rest of the text, once the request has ended (its held-back characters included)."""
        if not self.stopped:
            self._append(self.detokenizer.flush())
        return self._release(final=True)

    def _append(self, piece: str) -> None:
        if not piece:
            return
        start = max(0, len(self.text) - self.hold)  # a stop string may begin in the text already there
        self.text += piece
        found = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if found:
            cut, stop = min(found)  # the earliest stop string in the text wins
            self.text, self.stop_reason = self.text[:cut], stop

    def _release(self, final: bool = False) -> str:
        end = len(self.text) if final or self.stopped else max(self.sent, len(self.text) - self.hold)
        piece, self.sent = self.text[self.sent : end], end
        return piece
