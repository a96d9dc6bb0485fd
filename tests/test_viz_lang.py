"""Figures and widgets speak the notebook's language: Chinese words in ``lang="zh"``, today's English otherwise.

A figure's visible words are its title, axis titles, subplot titles, legend entries, the play / pause
buttons and the slider's prefix (and each frame's title). In Chinese every one of them holds a Han
character, apart from names that stay English in Chinese writing (TTFT, TPOT) and the request labels
(``r3``); in English none does. The data drawn must not depend on the language.
"""

from __future__ import annotations

import re
import string

import pytest

from cblab_teach import Engine, EngineConfig
from cblab_teach.viz import (
    Playground,
    StepPlayer,
    UnknownLanguageError,
    attention_figure,
    block_map_figure,
    budget_figure,
    budget_overview,
    compare_timelines,
    current_language,
    mask_figure,
    metrics_figure,
    set_language,
    setup_notebook,
    timeline_figure,
)
from cblab_teach.viz.labels import EN, ZH
from cblab_teach.viz.lang import ENV

from .viz_layout_cases import _runs

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
SAME_IN_BOTH = {"TTFT", "TPOT"}  # metric names Chinese posts write in English too


@pytest.fixture(autouse=True)
def fresh_language(monkeypatch):
    """Every test starts with nothing chosen, no environment variable, and ends the same way."""
    monkeypatch.delenv(ENV, raising=False)
    set_language(None)
    yield
    monkeypatch.delenv(ENV, raising=False)
    set_language(None)


@pytest.fixture(scope="module")
def runs() -> dict[str, list]:
    return _runs()


def visible_texts(fig) -> list[str]:
    """Every word a reader sees in the figure (see the module docstring), request labels left out."""
    js = fig.to_plotly_json()
    layout = js["layout"]
    out = [layout.get("title", {}).get("text", "")]
    for key, value in layout.items():
        if re.fullmatch(r"[xy]axis\d*", key):
            out.append(value.get("title", {}).get("text", ""))
    out += [a.get("text", "") for a in layout.get("annotations", ())]
    out += [b["label"] for menu in layout.get("updatemenus", ()) for b in menu.get("buttons", ())]
    out += [s.get("currentvalue", {}).get("prefix", "") for s in layout.get("sliders", ())]
    out += [t.get("name", "") for t in js["data"] if t.get("showlegend") is not False and t["type"] != "heatmap"]
    for frame in js.get("frames", ()):
        out.append(frame.get("layout", {}).get("title", {}).get("text", ""))
    return [t for t in out if t and t not in SAME_IN_BOTH and not re.fullmatch(r"r\d+", t)]


def stand_in_collector():
    from .test_viz import StandInCollector

    return StandInCollector()


def attention_recorder(runs):
    from cblab_teach import ModelConfig, TinyLM
    from cblab_teach.plugins.attention_recorder import AttentionRecorder

    recorder = AttentionRecorder()
    model = TinyLM(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=0)
    Engine(model, EngineConfig(max_tokens_per_step=8), plugins=[recorder]).generate([[1, 2, 3], [4, 5]], 2)
    return recorder


FIGURES = {
    "budget": lambda runs, lang: budget_figure(runs["continuous"], lang=lang),
    "overview": lambda runs, lang: budget_overview(runs["continuous"], lang=lang),
    "mask": lambda runs, lang: mask_figure(runs["continuous"], lang=lang),
    "blocks": lambda runs, lang: block_map_figure(runs["continuous"], lang=lang),
    "timeline": lambda runs, lang: timeline_figure(runs["cramped"], lang=lang),
    "timeline-time": lambda runs, lang: timeline_figure(runs["cramped"], x="time", lang=lang),
    "comparison": lambda runs, lang: compare_timelines(runs["continuous"], runs["static"], lang=lang),
    "metrics": lambda runs, lang: metrics_figure(stand_in_collector(), lang=lang),
    "attention": lambda runs, lang: attention_figure(attention_recorder(runs), lang=lang),
}


def test_the_two_tables_have_the_same_keys_and_fields_and_each_its_own_script() -> None:
    assert set(ZH) == set(EN)
    fields = {lang: {k: {f for _, f, _, _ in string.Formatter().parse(v) if f} for k, v in t.items()}
              for lang, t in (("en", EN), ("zh", ZH))}  # fmt: skip
    assert fields["zh"] == fields["en"]
    assert [k for k, v in ZH.items() if not HAN.search(v)] == []
    assert [k for k, v in EN.items() if HAN.search(v)] == []


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_word_of_a_chinese_figure_is_chinese_and_english_stays_english(runs, name) -> None:
    zh, en = FIGURES[name](runs, "zh"), FIGURES[name](runs, "en")
    zh_texts, en_texts = visible_texts(zh), visible_texts(en)
    assert len(zh_texts) >= 3 and len(zh_texts) == len(en_texts), (zh_texts, en_texts)
    assert [t for t in zh_texts if not HAN.search(t)] == []
    assert [t for t in en_texts if HAN.search(t)] == []
    # the language changes the words only: the same traces, the same frames, the same numbers
    assert [t.type for t in zh.data] == [t.type for t in en.data]
    assert [(t.x, t.y) for t in zh.data if t.type != "heatmap"] == [(t.x, t.y) for t in en.data if t.type != "heatmap"]
    assert [f.name for f in zh.frames] == [f.name for f in en.frames]
    # left out, the language is English here (the tests run outside any folder named zh)
    assert visible_texts(FIGURES[name](runs, None)) == en_texts


def test_known_english_and_chinese_words(runs) -> None:
    en, zh = budget_overview(runs["continuous"], lang="en"), budget_overview(runs["continuous"], lang="zh")
    assert en.layout.title.text.startswith("token budget per step: decode (solid)")
    assert [t.name for t in en.data[:4]] == ["decode", "prefill", "unused", "budget"]
    assert [t.name for t in zh.data[:4]] == ["解码", "预填充", "未用", "预算"]
    anim = budget_figure(runs["continuous"], lang="zh")
    assert [b.label for b in anim.layout.updatemenus[0].buttons] == ["▶ 播放", "❚❚ 暂停"]
    assert anim.layout.title.text.startswith("第 0 步：")
    assert [t.legendgroup for t in zh.data[:3]] == [t.legendgroup for t in en.data[:3]]  # inner names stay
    assert "tokens<extra>step" in en.data[0].hovertemplate and "个 token<extra>第" in zh.data[0].hovertemplate
    timeline = timeline_figure(runs["cramped"], lang="zh")
    assert all(HAN.search(t.hovertemplate) for t in timeline.data if t.type == "bar")


def test_the_language_comes_from_the_call_then_the_setting_then_the_environment_then_the_folder(
    monkeypatch, tmp_path, runs
) -> None:
    folder = tmp_path / "zh"
    folder.mkdir()
    assert current_language() == "en"
    monkeypatch.chdir(folder)  # Jupyter and nbval start a notebook's kernel in the notebook's folder
    assert current_language() == "zh"
    assert HAN.search(timeline_figure(runs["static"]).layout.title.text)
    monkeypatch.setenv(ENV, "en")  # the environment beats the folder
    assert current_language() == "en"
    assert set_language("zh") == "zh" and current_language() == "zh"  # an explicit choice beats both
    assert not HAN.search(timeline_figure(runs["static"], lang="en").layout.title.text)  # and the call beats all
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV, "zh")
    assert set_language(None) == "zh"


def test_setup_notebook_fixes_the_language_of_the_notebooks_folder(monkeypatch, tmp_path) -> None:
    (tmp_path / "zh").mkdir()
    monkeypatch.chdir(tmp_path / "zh")
    setup_notebook(widget_css=False)
    monkeypatch.chdir(tmp_path)  # a notebook that changes folder later keeps its language
    assert current_language() == "zh"
    setup_notebook(widget_css=False, lang="en")
    assert current_language() == "en"


def test_an_unknown_language_is_a_typed_error_naming_it(monkeypatch, runs) -> None:
    with pytest.raises(UnknownLanguageError, match="'fr'"):
        timeline_figure(runs["static"], lang="fr")
    with pytest.raises(UnknownLanguageError, match="'de'"):
        set_language("de")
    monkeypatch.setenv(ENV, "klingon")
    with pytest.raises(UnknownLanguageError, match="'klingon'"):
        current_language()


def test_step_player_in_chinese(runs) -> None:
    player = StepPlayer(runs["continuous"], view="blocks", lang="zh")
    assert (player.slider.description, player.play.description) == ("步", "播放")
    assert HAN.search(player.figure.layout.title.text)
    player.show_step(3)
    assert player.figure.layout.title.text.startswith(f"第 {runs['continuous'][3].step} 步")
    english = StepPlayer(runs["continuous"], view="mask")
    assert (english.slider.description, english.play.description) == ("step", "play")


def test_playground_in_chinese() -> None:
    pg = Playground(num_requests=3, prompt_len=(4, 10), new_tokens=(2, 4), lang="zh")
    words = {name: c.description for name, c in pg.controls.items()}
    code_names = {"max_tokens_per_step", "prefill_chunk_size", "block_size", "num_blocks"}  # settings keep their names
    assert {n for n, d in words.items() if not HAN.search(d)} == code_names
    assert all(words[n] == n for n in code_names)
    assert HAN.search(pg.status.value) and str(len(pg.records)) in pg.status.value
    assert HAN.search(pg.overview.layout.title.text) and HAN.search(pg.timeline.layout.title.text)
    assert pg.blocks.slider.description == "步"
    pg.controls["num_requests"].value = 2  # a re-run redraws in the same language
    assert HAN.search(pg.timeline.layout.title.text) and HAN.search(pg.status.value)
