"""Token ids to text one token at a time, never half a character.

A byte-level BPE token is a run of bytes, not of characters: 你 is three UTF-8 bytes that SmolLM2's tokenizer
splits over two tokens, and an emoji's four bytes may take three. Decoding the first token alone gives the
replacement character ``\\ufffd``; a streaming server that sent it would show the client a box. So new text is
released only once it decodes cleanly.

Decoding every id again at every token costs O(n) per token. Like vLLM's incremental detokenizer
(``vllm/transformers_utils/detokenizer_utils.py``), this one decodes a short window instead: the ids from the
last clean point (``prefix``) on, and subtracts the text the window already had at ``read``.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """``add(token_id)`` returns only the new text; everything it and :meth:`flush` return, joined, equals
    ``tokenizer.decode(ids, skip_special_tokens=True)``."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # the window starts here: text before it is final
        self.read = 0  # ids[prefix:read] decode to text already returned
        self.done = ""  # that text, kept: it changes only when the window moves

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """The text ``token_id`` completes: "" while a character is still missing bytes, or for a special token."""
        self.ids.append(int(token_id))
        text = self._decode(self.ids[self.prefix :])
        if len(text) <= len(self.done) or text.endswith(REPLACEMENT):
            return ""  # nothing new, or the last character is not complete yet: hold it
        new = text[len(self.done) :]
        self.prefix, self.read = self.read, len(self.ids)
        self.done = self._decode(self.ids[self.prefix : self.read])
        return new

    def flush(self) -> str:
        """What is held back at the end (the sequence stopped inside a character): as ``decode`` shows it."""
        rest = self._decode(self.ids[self.prefix :])[len(self.done) :]
        self.prefix = self.read = len(self.ids)
        self.done = ""
        return rest
