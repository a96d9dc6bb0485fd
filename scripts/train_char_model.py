"""Train the course's readable demo model: a character-level TinyLM on text that ships with Python.

Why: the engine's correctness is proven with random-weight models, but a
person watching a batch run reads text far better than token ids. This script
trains a tiny character model on offline text (the Zen of Python, the Python
license, standard-library docstrings) for a few minutes on a laptop CPU and
writes ``cblab_teach/data/char_model.pt`` and ``char_vocab.json``.

    .venv/bin/python scripts/train_char_model.py --minutes 4

The training forward below is a dense causal version of ``TinyLM.forward``
(the engine's forward runs without gradients over ragged batches); it uses the
model's own modules, so the trained weights load straight into the engine.
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from cblab_teach import ModelConfig, TinyLM
from cblab_teach.model.layers import RotaryEmbedding

DATA_DIR = Path(__file__).resolve().parents[1] / "cblab_teach" / "data"
DOCSTRING_MODULES = (
    "collections",
    "functools",
    "itertools",
    "json",
    "textwrap",
    "string",
    "heapq",
    "bisect",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "queue",
    "threading",
    "contextlib",
    "dataclasses",
    "enum",
    "pathlib",
    "shutil",
    "tempfile",
    "argparse",
    "logging",
    "unittest",
    "doctest",
    "difflib",
    "csv",
    "calendar",
    "datetime",
    "pprint",
    "inspect",
)


def zen_of_python() -> str:
    """The Zen of Python, decoded from ``this.s`` (rot13) without printing it."""
    spec = importlib.util.find_spec("this")
    source = Path(spec.origin).read_text()
    encoded = source.split('s = """', 1)[1].split('"""', 1)[0]
    return codecs.decode(encoded, "rot13")


def python_license() -> str:
    path = Path(os.__file__).parent / "LICENSE.txt"
    return path.read_text(errors="ignore") if path.exists() else ""


def stdlib_docstrings() -> str:
    """Docstrings of a fixed list of modules and their public members, in a fixed order."""
    parts: list[str] = []
    for name in DOCSTRING_MODULES:
        module = importlib.import_module(name)
        if module.__doc__:
            parts.append(module.__doc__)
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            if attr.startswith("_"):
                continue
            doc = getattr(getattr(module, attr, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40 and doc not in parts:
                parts.append(doc)
    return "\n\n".join(parts)


def build_corpus() -> str:
    text = "\n\n".join([zen_of_python()] * 40 + [python_license(), stdlib_docstrings()])
    allowed = {chr(c) for c in range(32, 127)} | {"\n"}
    lines = ("".join(ch for ch in line if ch in allowed).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line or True)


def split_heads(proj: nn.Linear, h: torch.Tensor, b: int, t: int, n: int, rope: tuple | None) -> torch.Tensor:
    """``[B*T, hidden]`` -> ``[B, n, T, head_dim]``, rotated by RoPE when ``rope`` is ``(cos, sin)``."""
    y = proj(h).view(b * t, n, -1)
    if rope is not None:
        y = RotaryEmbedding.apply(y, *rope)
    return y.view(b, t, n, -1).transpose(1, 2)


def causal_forward(model: TinyLM, ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, vocab]`` of a dense causal batch, with the modules ``TinyLM.forward`` uses."""
    cfg = model.config
    b, t = ids.shape
    cos, sin = model.rotary.cos_sin(torch.arange(t).repeat(b), model.dtype)
    x = model.embed_tokens(ids)
    for block in model.layers:
        h = block.input_layernorm(x).reshape(b * t, -1)
        attn = block.self_attn
        q = split_heads(attn.q_proj, h, b, t, cfg.num_heads, (cos, sin))
        k = split_heads(attn.k_proj, h, b, t, cfg.kv_heads, (cos, sin))
        v = split_heads(attn.v_proj, h, b, t, cfg.kv_heads, None)
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(cfg.head_dim))
        x = x + attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return model.lm_head(model.norm(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget")
    parser.add_argument("--max-iters", type=int, default=4000)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    text = build_corpus()
    vocab = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(vocab)}
    data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    print(f"corpus: {len(text):,} characters, vocabulary of {len(vocab)}")

    config = ModelConfig(vocab_size=len(vocab), hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256)
    model = TinyLM(config, seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    deadline = time.perf_counter() + args.minutes * 60
    bar = tqdm(range(args.max_iters), desc="training")
    loss_avg = None
    for it in bar:
        lr = 3e-3 * min(1.0, (it + 1) / 100) * max(0.1, 1 - it / args.max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - args.context - 1, (args.batch,))
        batch = torch.stack([data[s : s + args.context + 1] for s in starts])
        logits = causal_forward(model, batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.3f}")
        if time.perf_counter() > deadline:
            break

    args.out.mkdir(parents=True, exist_ok=True)
    cfg = {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(
        {"config": cfg, "vocab": "".join(vocab), "state_dict": state, "loss": loss_avg}, args.out / "char_model.pt"
    )
    (args.out / "char_vocab.json").write_text(json.dumps({"vocab": vocab}, indent=0))
    print(f"saved {args.out / 'char_model.pt'} (final loss {loss_avg:.3f})")


if __name__ == "__main__":
    main()
