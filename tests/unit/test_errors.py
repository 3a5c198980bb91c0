"""`first_line`: one console line from an exception, cut only where asked."""

from __future__ import annotations

from system.config.errors import first_line


def test_first_line_skips_blank_lines_and_cuts_where_asked():
    message = "\n  checkpoint of step 4 could not be written under " + "x" * 400 + " (intact)\nmore"
    exc = OSError(message)
    assert first_line(exc, limit=None).endswith("(intact)")
    assert len(first_line(exc)) == 300 and "intact" not in first_line(exc)
    assert first_line(ValueError("")) == "ValueError"
