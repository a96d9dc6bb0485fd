"""What every notebook kernel pays before its first cell: the course's imports stay free of known slow extras."""

from __future__ import annotations

import sys


def test_the_visual_layer_does_not_pull_in_the_iri_grammar() -> None:
    """plotly's widget module reaches jsonschema through nbformat; jsonschema imports rfc3987-syntax whenever it is
    installed, and that module builds a parser at import (about 6 s, in every kernel of every notebook). make install
    removes the package (an optional format check of jsonschema); this keeps it from coming back unnoticed."""
    import nbformat.validator  # noqa: F401  (the path that reached it)

    import cblab_teach.viz  # noqa: F401

    assert "rfc3987_syntax" not in sys.modules, "rfc3987-syntax is installed: `make install` removes it (Makefile)"
