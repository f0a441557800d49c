"""A user's mistake through the real entry point: exit 2, one line naming what, where and how
to fix it, no traceback (``--debug`` shows one)."""
from __future__ import annotations

import builtins
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from r2t_plugin.cli import main

from .conftest import write_yaml


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def _one_line_error(code: int, err: str, prog: str = "r2t compare") -> str:
    assert code == 2, err
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith(f"{prog}: "), err
    return err


def _table(config: dict, tmp_path: Path, text: str) -> None:
    (tmp_path / "cohort.csv").write_text(text)
    config["cohort"]["csv"] = str(tmp_path / "cohort.csv")


def _relabel(config: dict, tmp_path: Path, edit) -> None:
    lines = Path(config["cohort"]["csv"]).read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    edit(rows)
    _table(config, tmp_path, "\n".join([",".join(header)] + [",".join(r[h] for h in header) for r in rows]) + "\n")


def _set(key, value):
    return lambda rows: [r.__setitem__(key, value) for r in rows]


def _first(key, value):
    return lambda rows: rows[0].__setitem__(key, value)


CASES = {
    "renamed column": (lambda c, t: c["cohort"].update(label_column="diagnosis"),
                       ["missing column(s) ['diagnosis']", "cohort.csv", "rename the column"]),
    "empty csv": (lambda c, t: _table(c, t, ""), ["cohort.csv: the file is empty", "header line"]),
    "header only": (lambda c, t: _table(c, t, "case_id,slide_id,label\n"), ["header but no rows", "add one row"]),
    "single class": (lambda c, t: _relabel(c, t, _set("label", "1")), ["single class ['1']", "label_column"]),
    "300-character slide id": (lambda c, t: _relabel(c, t, _first("slide_id", "s" * 300)),
                               ["too long for a file name", "(300 characters)", "shorten them"]),
    "slide id outside": (lambda c, t: _relabel(c, t, _first("slide_id", "../../etc/passwd")),
                         ["'../../etc/passwd'", "point outside the feature folder"]),
    "negative split_seed": (lambda c, t: c.update(split_seed=-1), ["c.yaml: split_seed: must be in 0", "got -1"]),
    "output is a file": (lambda c, t: ((t / "taken").write_text("x"), c.update(output=str(t / "taken"))),
                         ["output", "taken is a file, not a folder", "set output"]),
    "missing cohort csv": (lambda c, t: c["cohort"].update(csv=str(t / "nope.csv")),
                                  ["no such file or folder", "nope.csv", "check the path"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_is_one_line_and_exit_2(name, mini_config, tmp_path, capsys):
    mutate, expected = CASES[name]
    mutate(mini_config, tmp_path)
    config = write_yaml(tmp_path / "c.yaml", mini_config)
    err = _one_line_error(*_cli(["compare", config, "-q"], capsys))
    for part in expected:
        assert part in err, (part, err)


def test_debug_shows_the_traceback(mini_config, tmp_path, capsys):
    mini_config["cohort"]["label_column"] = "diagnosis"
    config = write_yaml(tmp_path / "c.yaml", mini_config)
    code, err = _cli(["compare", config, "-q", "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "CohortError" in err
    assert err.splitlines()[-1].startswith("r2t compare: ") and "diagnosis" in err.splitlines()[-1]


def test_read_only_output_folder(mini_config, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse writes as the kernel would
        import r2t_plugin.compare.folder as folder

        def refusing(path, *args, **kwargs):
            if Path(path).parent == ro and (args[:1] or [kwargs.get("mode", "r")])[0] != "r":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return builtins.open(path, *args, **kwargs)

        monkeypatch.setattr(folder, "open", refusing, raising=False)
    mini_config["output"] = str(ro)
    config = write_yaml(tmp_path / "c.yaml", mini_config)
    err = _one_line_error(*_cli(["compare", config, "-q"], capsys))
    assert f"permission denied for {ro}" in err and "choose a folder you can write to" in err
    ro.chmod(0o755)


def test_truncated_results_csv(mini_config, tmp_path, capsys):
    config = write_yaml(tmp_path / "c.yaml", mini_config)
    assert main(["compare", config, "-q"]) in (0, 1)
    capsys.readouterr()
    results = Path(mini_config["output"]) / "results.csv"
    text = results.read_text()
    results.write_text(text[:-7])  # cut in the middle of the last row
    err = _one_line_error(*_cli(["compare", config, "-q"], capsys))
    assert str(results) in err and "cut short" in err and "delete it" in err
    assert results.read_text() == text[:-7]  # left as it was


def test_region_error_in_heatmap(tmp_path, capsys):
    from r2t_plugin.data.readers import write_clam_h5
    from r2t_plugin.models import ModelSpec, build_model, save_checkpoint

    spec = ModelSpec("abmil", 8, 2, options={"dim": 8}, r2t={"layout": "coords", "heads": 2, "crmsa_heads": 2})
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(spec).state_dict(), spec)
    coords = np.array([(c, r) for r in range(4) for c in range(4)]) * 256
    coords[1] = coords[0]  # two patches at one place
    feats = write_clam_h5(tmp_path / "slide.h5", np.ones((16, 8), np.float32), coords, 256)
    code, err = _cli(["heatmap", "--checkpoint", str(ckpt), "--features", str(feats), "-o", str(tmp_path / "h.png")],
                     capsys)
    err = _one_line_error(code, err, "r2t heatmap")
    assert "two instances fall into one grid cell" in err and "check the coordinates" in err
    assert not (tmp_path / "h.png").exists()


def test_real_entry_point(tmp_path):
    """The console entry point as a process: exit status 2 and one line on stderr."""
    (tmp_path / "out").write_text("a file")
    config = write_yaml(tmp_path / "c.yaml", {"cohort": {"csv": "x.csv", "features": ".", "task": "classification"},
                                              "aggregators": ["mean"], "output": "out"})
    env = {**os.environ, "R2T_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, "-m", "r2t_plugin.cli", "compare", config, "-q"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "is a file, not a folder" in done.stderr
