"""The language of the figures and widgets: English or Chinese, chosen once per kernel.

The Chinese notebooks (``notebooks/zh/``, ``exercises/zh/``, ``solutions/zh/``) run the English notebooks'
code cells byte for byte, so a notebook cannot pass ``lang="zh"`` itself. Each view therefore takes
``lang=None`` to mean "the current language", decided in this order:

1. ``set_language("zh")`` (or ``setup_notebook(lang="zh")``), when called;
2. the ``CBLAB_TEACH_LANG`` environment variable (``en`` or ``zh``), for scripts, the site and tests;
3. the kernel's working directory: Jupyter, nbval and nbconvert start a notebook's kernel in the notebook's
   folder, so a kernel started in a folder named ``zh`` draws in Chinese;
4. English.

The notebook's own metadata (``cblab_teach.lang``) is not visible to the kernel, hence the folder. Every
course notebook calls ``setup_notebook()`` first, which fixes the language then (a later ``os.chdir`` in the
notebook does not change it). An explicit ``lang=`` argument to a view always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UnknownLanguageError

LANGS = ("en", "zh")
ENV = "CBLAB_TEACH_LANG"

_chosen: str | None = None


def check_language(lang: str) -> str:
    """``lang`` itself if it is one of :data:`LANGS`; a typed error naming it otherwise."""
    if lang not in LANGS:
        raise UnknownLanguageError(f"unknown language {lang!r}; choose one of {LANGS}")
    return lang


def detect_language(cwd: Path | None = None) -> str:
    """The language from the environment (``CBLAB_TEACH_LANG``), else from the working directory's name."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return check_language(env)
    folder = Path.cwd() if cwd is None else cwd
    return "zh" if folder.name == "zh" else "en"


def set_language(lang: str | None) -> str:
    """Draw every later figure and widget in ``lang``; ``None`` goes back to detecting it. Returns the language."""
    global _chosen
    _chosen = None if lang is None else check_language(lang)
    return current_language()


def current_language() -> str:
    """The language a view uses when it is given none (see the module docstring for the order)."""
    return _chosen if _chosen is not None else detect_language()


def resolve(lang: str | None) -> str:
    """A view's ``lang`` argument made concrete: itself (checked), or the current language."""
    return current_language() if lang is None else check_language(lang)
