"""A tiny character-level TinyLM whose generations people can read.

Correctness is proven with random-weight models; this one exists so that a
batch of requests in a notebook shows *text* ("Beautiful is better than ...")
instead of token ids. It was trained by ``scripts/train_char_model.py`` on text
that ships with Python (the Zen of Python, the Python license, standard-library
docstrings); each character is one token. It saw windows of 64 characters in
training, so keep prompt plus output within about 64 characters for readable
text (longer sequences still run correctly; they just read as babble).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from .errors import ConfigError, RequestError
from .model import ModelConfig, TinyLM

CHECKPOINT = Path(__file__).parent / "data" / "char_model.pt"


class UnknownCharacterError(RequestError):
    """The text holds a character the demo model never saw in training."""


class CharTokenizer:
    """One token per character of a fixed vocabulary."""

    def __init__(self, vocab: Sequence[str]) -> None:
        if len(set(vocab)) != len(vocab):
            raise ConfigError("CharTokenizer vocabulary has repeated characters")
        self.vocab = list(vocab)
        self.index = {ch: i for i, ch in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a character outside the vocabulary is a typed error that names it."""
        unknown = sorted({ch for ch in text if ch not in self.index})
        if unknown:
            raise UnknownCharacterError(f"characters {unknown!r} are not in the demo model's vocabulary")
        return [self.index[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if not 0 <= int(i) < len(self.vocab):
                raise UnknownCharacterError(f"token id {i!r} is outside the vocabulary of {len(self.vocab)}")
            out.append(self.vocab[int(i)])
        return "".join(out)


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[dict, str]:
    if not Path(path).exists():
        raise ConfigError(f"no demo checkpoint at {path!r}; run scripts/train_char_model.py")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt, ckpt["vocab"]


def load_char_model(path: str | Path = CHECKPOINT, dtype: torch.dtype = torch.float32) -> tuple[TinyLM, CharTokenizer]:
    """The trained demo model (a fresh TinyLM each call) and its tokenizer."""
    ckpt, vocab = _load(str(path))
    model = TinyLM(ModelConfig(**ckpt["config"], dtype=dtype))
    model.load_state_dict({k: v.to(dtype) for k, v in ckpt["state_dict"].items()}, strict=True)
    return model.eval(), CharTokenizer(vocab)
