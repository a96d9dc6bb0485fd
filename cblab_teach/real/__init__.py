"""Real models: SmolLM2-135M-Instruct from a wheel, its chat template, text in and text out.

``load_smollm2()`` gives a :class:`ChatModel` whose ``.model`` is an ordinary :class:`~cblab_teach.TinyLM`:
every engine feature runs on it unchanged. The rest turns the engine's ids into text the way a server must:
incrementally, never half a character, cut at stop strings.
"""

from .chat_model import ChatModel, check_messages
from .complete import Completion, complete, prompt_ids
from .detokenizer import IncrementalDetokenizer
from .loader import gguf_path, load_smollm2, model_dir
from .text import TextOutput, check_stop

__all__ = [
    "ChatModel",
    "Completion",
    "IncrementalDetokenizer",
    "TextOutput",
    "check_messages",
    "check_stop",
    "complete",
    "gguf_path",
    "load_smollm2",
    "model_dir",
    "prompt_ids",
]
