"""The tiny Llama-style model."""

from .config import ModelConfig
from .tiny_lm import TinyLM

__all__ = ["ModelConfig", "TinyLM"]
