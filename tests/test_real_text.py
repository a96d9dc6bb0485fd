"""Text out of token ids: the incremental detokenizer and stop strings, against a plain full decode.

The reference everywhere is ``tokenizer.decode`` of the whole sequence, recomputed from scratch: the streaming
code must give the same text, never show half a character, and never take back text it already showed.
"""

from __future__ import annotations

import random

import pytest

from cblab_teach.errors import RequestError
from cblab_teach.real import IncrementalDetokenizer, TextOutput, check_messages, check_stop

TEXTS = [
    "The capital of France is Paris. It has 2,102,650 inhabitants.",
    "你好，世界！连续批处理让多个请求共享一次前向计算。",
    "Emoji: 🙂👍🏽🇫🇷 and a family 👨‍👩‍👧 in one line.",
    "def reverse(s: str) -> str:\n    return s[::-1]  # slicing\n\n\nprint(reverse('héllo'))",
    "Mixed 中文 and English, naïve café, ½ ≠ 0.5 → ∞",
    "<|im_start|>user\nHi 😀<|im_end|>\n<|im_start|>assistant\n你好<|im_end|>",
]


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2.tokenizer


def stream(tok, ids):
    d = IncrementalDetokenizer(tok)
    pieces = [d.add(t) for t in ids]
    return pieces, d.flush()


@pytest.mark.parametrize("text", TEXTS, ids=["english", "chinese", "emoji", "code", "mixed", "chat"])
def test_every_prefix_streams_to_the_full_decode_without_half_characters(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    for k in range(len(ids) + 1):  # a stop after every token, inside a character too
        pieces, rest = stream(tok, ids[:k])
        assert "".join(pieces) + rest == tok.decode(ids[:k], skip_special_tokens=True)
        assert "\ufffd" not in "".join(pieces), f"half a character shown after {k} tokens: {pieces}"


def test_a_chinese_character_waits_for_its_last_byte(tok):
    ids = tok.encode("你", add_special_tokens=False)
    assert len(ids) > 1  # byte-level BPE splits it: the lesson depends on it
    d = IncrementalDetokenizer(tok)
    assert [d.add(t) for t in ids] == [""] * (len(ids) - 1) + ["你"]


def test_random_ids_stream_to_the_full_decode(tok):
    rng = random.Random(0)
    for _ in range(40):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 30))]
        pieces, rest = stream(tok, ids)
        assert "".join(pieces) + rest == tok.decode(ids, skip_special_tokens=True)


def expected_stop_text(tok, ids, stops):
    """Brute force: the first prefix of tokens whose text holds a stop string, cut at its earliest one."""
    for k in range(1, len(ids) + 1):
        text = tok.decode(ids[:k], skip_special_tokens=True)
        found = [text.find(s) for s in stops if s in text]
        if found:
            return text[: min(found)], k
    return tok.decode(ids, skip_special_tokens=True), None


STOP_CASES = [
    (TEXTS[0], [". "]),
    (TEXTS[0], ["Paris", "capital"]),
    (TEXTS[1], ["世界"]),
    (TEXTS[1], ["！连"]),  # the stop string spans tokens and characters
    (TEXTS[2], ["👍"]),
    (TEXTS[3], ["\n\n"]),
    (TEXTS[3], ["return s[", "never there"]),
    (TEXTS[4], ["not in the text"]),
]


@pytest.mark.parametrize(("text", "stops"), STOP_CASES)
def test_stop_strings_cut_where_the_full_text_says_and_nothing_shown_is_taken_back(tok, text, stops):
    ids = tok.encode(text, add_special_tokens=False)
    want, last = expected_stop_text(tok, ids, stops)
    out = TextOutput(tok, stop=stops)
    shown = ""
    for t in ids:
        shown += out.add(t)
        assert want.startswith(shown), f"showed {shown!r}, which the final text {want!r} does not start with"
    shown += out.finish()
    assert shown == out.text == want
    assert not any(s in shown for s in stops)
    assert (out.stop_reason is not None) == (last is not None)
    if last is not None:
        assert out.token_ids == ids[:last]  # tokens after the stop are ignored


def test_stop_text_is_held_back_only_as_long_as_it_could_still_be_a_stop(tok):
    out = TextOutput(tok, stop=["\n\n"])
    ids = tok.encode("one\ntwo", add_special_tokens=False)
    shown = "".join(out.add(t) for t in ids)
    assert shown == "one\ntw"  # a 2-character stop string: the last character is held, it might begin one
    assert out.finish() == "o" and out.stop_reason is None


def test_a_stop_token_ends_the_text_without_its_own_text(tok):
    ids = tok.encode("alpha beta gamma", add_special_tokens=False)
    out = TextOutput(tok, stop_token_ids=[ids[1]])
    shown = "".join(out.add(t) for t in ids) + out.finish()
    assert shown == tok.decode(ids[:1]) and out.stop_reason == ids[1] and out.token_ids == ids[:2]


@pytest.mark.parametrize("bad", [[""], "", 3, ["ok", None], [b"x"]])
def test_bad_stop_is_a_typed_error_naming_it(bad):
    with pytest.raises(RequestError, match="stop must be"):
        check_stop(bad)


@pytest.mark.parametrize(
    "bad", [[], "hello", [{"role": "robot", "content": "x"}], [{"role": "user"}], [{"role": "user", "content": 3}]]
)
def test_bad_messages_are_a_typed_error_naming_them(bad):
    with pytest.raises(RequestError, match="messages"):
        check_messages(bad)
