"""Run conversations through an :class:`Engine` and get text back: the engine's ids, decoded as they arrive.

Every request joins the same continuous batch; after each step, each request's new ids go through its own
:class:`TextOutput`, and a request whose text hit a stop string is finished on the spot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.engine import Engine
from ..core.request import SamplingParams
from .chat_model import ChatModel
from .text import TextOutput


@dataclass
class Completion:
    """One request's answer."""

    request_id: int
    prompt_ids: list[int]
    text: str
    token_ids: list[int]  # as generated, up to and including the token that ended it
    finish_reason: str  # "stop" | "length" | "abort", as OpenAI's API says it
    stop_reason: str | int | None = None  # the stop string or stop token id, if one ended it
    ttft: float | None = None  # seconds from arrival to the first token
    decode_tokens_per_s: float | None = None  # tokens after the first over the time they took

    @classmethod
    def of(cls, req, out: TextOutput) -> Completion:
        reason = "stop" if out.stopped else req.finish_reason
        tokens = out.token_ids if out.stopped else list(req.output_ids)
        times = req.token_times
        ttft = times[0] - req.arrival_time if times else None
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        return cls(req.request_id, list(req.prompt_ids), out.text, tokens, reason, out.stop_reason, ttft, rate)


def prompt_ids(chat: ChatModel, prompt) -> list[int]:
    """A conversation (list of messages) in the chat template, or a plain string as written."""
    return chat.encode(prompt) if isinstance(prompt, str) else chat.encode_chat(prompt)


def complete(
    engine: Engine,
    chat: ChatModel,
    prompts: Sequence,
    max_new_tokens: int = 64,
    stop=None,
    stop_token_ids: Sequence[int] = (),
    sampling: SamplingParams | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> list[Completion]:
    """Answer every prompt (a list of messages, or a plain string) in one continuous batch.

    ``on_text(i, piece)`` hears prompt ``i``'s text as it streams. Requests end at the model's end-of-turn
    token (``chat.eos_token_id``), at ``max_new_tokens``, or at a stop string or stop token id.
    """
    rids, outputs = [], {}
    for prompt in prompts:
        rid = engine.add_request(prompt_ids(chat, prompt), max_new_tokens, sampling=sampling,
                                 eos_token_id=chat.eos_token_id)  # fmt: skip
        rids.append(rid)
        outputs[rid] = TextOutput(chat.tokenizer, stop, stop_token_ids)
    seen = dict.fromkeys(rids, 0)
    index = {rid: i for i, rid in enumerate(rids)}

    def emit(rid: int, piece: str) -> None:
        if piece and on_text is not None:
            on_text(index[rid], piece)

    while any(not engine.request(rid).is_finished for rid in rids):
        engine.step()
        for rid in rids:
            req, out = engine.request(rid), outputs[rid]
            for token in req.output_ids[seen[rid] :]:
                emit(rid, out.add(token))
            seen[rid] = len(req.output_ids)
            if out.stopped and not req.is_finished:
                engine.finish(rid)
    for rid in rids:
        emit(rid, outputs[rid].finish())
    return [Completion.of(engine.request(rid), outputs[rid]) for rid in rids]
