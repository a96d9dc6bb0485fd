"""Text in, token ids out, and back: the only part of the server that knows about tokenizers.

The engine sees ids; the HTTP layer sees strings. Between them sits a :class:`TextModel`: it turns a chat or a
prompt into ids (the chat template lives here) and gives each answer its own incremental text output, cut at stop
strings (:class:`~cblab_teach.real.TextOutput`). mini-sglang keeps this split too: its HTTP server queues requests
and streams results, and tokenizing and detokenizing live in their own module.

Two models wear the same face, so the server code is one: SmolLM2-135M-Instruct (real tokenizer, real chat
template) and the course's tiny character model (one token per character, a plain-text "template"), which answers
in milliseconds and so keeps the server's tests fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..model import TinyLM
from ..real.chat_model import ChatModel, check_messages
from ..real.text import TextOutput


class CharTextTokenizer:
    """The character model's tokenizer with the ``decode(ids, skip_special_tokens=...)`` that
    :class:`~cblab_teach.real.TextOutput` calls (a character vocabulary has no special tokens to skip)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids)


@dataclass
class TextModel:
    """A :class:`TinyLM` with what turns text into its ids and back; what the server serves."""

    name: str  # the model id clients send and /v1/models lists
    model: TinyLM
    tokenizer: object  # has encode(text) and decode(ids, skip_special_tokens=...)
    eos_token_id: int | None  # the engine ends a request here (None: only at max_tokens)
    chat: ChatModel | None = None  # the real model's chat template; None: the plain-text one below

    @property
    def max_context(self) -> int:
        """Prompt plus generated tokens may not exceed this (the model's max_position)."""
        return self.model.config.max_position

    def encode(self, text: str) -> list[int]:
        """A completion prompt's ids, as written (nothing added)."""
        return list(self.chat.encode(text) if self.chat is not None else self.tokenizer.encode(text))

    def encode_chat(self, messages: Sequence) -> list[int]:
        """A conversation's ids in the model's chat template, ending where the assistant's answer begins.

        The character model was never trained on conversations: its "template" is the messages' contents, one
        per line, so a chat request continues the text of the last message."""
        if self.chat is not None:
            return self.chat.encode_chat(messages)
        return self.tokenizer.encode("\n".join(m["content"] for m in check_messages(messages)))

    def text_output(self, stop: Sequence[str] = ()) -> TextOutput:
        """A fresh incremental decoder for one answer: text in safe pieces, cut before the first stop string."""
        return TextOutput(self.tokenizer, list(stop) or None)


def smollm2_text_model() -> TextModel:
    """SmolLM2-135M-Instruct (``cblab_teach.real``), served under its own name."""
    from ..real import load_smollm2

    chat = load_smollm2()
    return TextModel(chat.name, chat.model, chat.tokenizer, chat.eos_token_id, chat)


def tiny_text_model(dtype: torch.dtype = torch.float32) -> TextModel:
    """The tiny character model of ``demo_model.py``: readable text, milliseconds per step, no end token.
    (Tests load it in float64, so that no greedy token hinges on a float32 near-tie.)"""
    from ..demo_model import load_char_model

    model, tokenizer = load_char_model(dtype=dtype)
    return TextModel("cblab-char-tiny", model, CharTextTokenizer(tokenizer), None)


MODELS = {"smollm2": smollm2_text_model, "tiny": tiny_text_model}
