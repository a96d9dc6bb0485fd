"""A real model with what turns text into its token ids and back: the tokenizer and the chat template."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import RequestError
from ..model import TinyLM
from .detokenizer import IncrementalDetokenizer

ROLES = ("system", "user", "assistant")


def check_messages(messages) -> list[dict[str, str]]:
    """A conversation as ``[{"role": ..., "content": ...}, ...]``, or a :class:`RequestError` naming the bad item."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise RequestError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RequestError(f"messages[{i}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


@dataclass
class ChatModel:
    """``model`` computes; ``tokenizer`` and its chat template decide which ids it sees.

    An instruct model was trained on conversations wrapped in its template (SmolLM2 uses ChatML:
    ``<|im_start|>user\\n...<|im_end|>``); it answers well only when prompted the same way, and it ends its
    turn with ``eos_token_id`` (``<|im_end|>``), which the engine treats as the end of the request.
    """

    model: TinyLM
    tokenizer: object  # a Hugging Face tokenizer
    name: str
    path: Path  # a Hugging Face model folder: AutoModelForCausalLM.from_pretrained(path) loads the same weights

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def chat_text(self, messages, add_generation_prompt: bool = True) -> str:
        """The conversation as the model reads it: the chat template applied, not yet tokenized."""
        return self.tokenizer.apply_chat_template(
            check_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the conversation in the model's own chat template (ending with the assistant's cue)."""
        return self.encode(self.chat_text(messages, add_generation_prompt))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as written: special tokens in it are read as such, nothing is added."""
        if not isinstance(text, str):
            raise RequestError(f"encode needs a str, got {text!r}")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def tokens(self, ids) -> list[str]:
        """Each id's own text (its bytes may be part of a character: shown as the replacement character)."""
        return [self.tokenizer.decode([i]) for i in ids]

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer)

    def hf_model(self):
        """The same weights as a Hugging Face ``LlamaForCausalLM``, the reference the engine is compared with."""
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging

        was_on = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()  # a bar per load would clutter every notebook that compares with HF
        try:
            return AutoModelForCausalLM.from_pretrained(self.path, dtype=self.model.dtype).eval()
        finally:
            if was_on:
                logging.enable_progress_bar()
