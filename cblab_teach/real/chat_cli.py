"""``python -m cblab_teach chat``: talk to SmolLM2 through the engine in a terminal, token by token.

One engine serves the whole conversation with prefix caching on: each turn's prompt is the previous turn's
prompt and answer plus the new message, so its KV blocks are found in the cache and only the new tokens are
prefilled. The line after each answer says so, with the turn's time to first token and decode speed.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.config import EngineConfig
from ..core.engine import Engine
from .chat_model import ChatModel
from .complete import complete

HELP = "empty line or /exit: quit · /reset: forget the conversation"


def turn_summary(result, cached: int) -> str:
    ttft = f"{result.ttft * 1000:.0f} ms" if result.ttft is not None else "-"
    rate = f"{result.decode_tokens_per_s:.1f} tokens/s" if result.decode_tokens_per_s else "-"
    return (f"[{len(result.token_ids)} tokens, {result.finish_reason}; prompt {len(result.prompt_ids)} tokens, "
            f"{cached} from the prefix cache; TTFT {ttft}; decode {rate}]")  # fmt: skip


def chat_loop(
    chat: ChatModel,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = lambda s: print(s, end="", flush=True),
    max_new_tokens: int = 256,
    system: str | None = None,
) -> list[dict[str, str]]:
    """Read a line, answer it streaming, repeat; returns the conversation. ``read`` raising EOFError ends it."""
    engine = Engine(chat.model, EngineConfig(max_tokens_per_step=512, prefill_chunk_size=512,
                                             enable_prefix_caching=True, num_blocks=1024))  # fmt: skip
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    write(f"{chat.name} through the cblab-teach engine ({HELP})\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            break
        if line in ("", "/exit", "/quit"):
            break
        if line == "/reset":
            history = list(start)
            write("(conversation forgotten)\n")
            continue
        history.append({"role": "user", "content": line})
        hits = engine.stats.prefix_hit_tokens
        write("bot> ")
        (result,) = complete(engine, chat, [history], max_new_tokens, on_text=lambda _, piece: write(piece))
        cached = engine.stats.prefix_hit_tokens - hits
        write("\n" + turn_summary(result, cached) + "\n")
        history.append({"role": "assistant", "content": result.text})
    return history
