"""``r2t compare`` with stderr in a log (not a terminal): one plain line per finished run."""
from __future__ import annotations

import io
import re
import sys

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.runner import run_compare

ESCAPES = re.compile(r"\r|\x1b\[")


def _two_runs(tiny_config):
    return parse_config({**tiny_config, "aggregators": [{"name": "mean", "options": {"dim": 8}}],
                         "variants": [{"name": "plain"}]})


def test_log_gets_one_line_per_finished_run(tiny_config, capsys):
    run_compare(_two_runs(tiny_config))
    err = capsys.readouterr().err
    assert not ESCAPES.search(err)
    lines = err.splitlines()
    assert len(lines) == 2, err  # no per-epoch lines of the runs inside
    for i, line in enumerate(lines, 1):
        assert re.fullmatch(rf"compare: run {i}/2: mean__plain__fold\d__seed0 ok \(\d+:\d\d\)", line), line


def test_terminal_gets_bars(tiny_config, monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    run_compare(_two_runs(tiny_config))
    text = tty.getvalue()
    assert "\r" in text and "compare" in text
    assert "fit mean__plain__fold0__seed0" in text  # each run's epoch bar shows too
