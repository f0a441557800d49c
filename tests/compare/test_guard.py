"""The output folder and its guard: whose folder it is, which temp files go, when the manifest
is written, feature hashes (relative keys, cache), slide ids, a full disk, the umask."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

import r2t_plugin.io as r2t_io
from r2t_plugin.compare import manifest as manifest_mod
from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.folder import HASH_CACHE, LOCK, MANIFEST_FORMAT, OutputError
from r2t_plugin.compare.manifest import feature_key, hash_data
from r2t_plugin.compare.runner import run_compare
from r2t_plugin.data import Cohort, CohortError, SplitError

from .conftest import read_rows

HEX_TEMP = ".results.csv.r2t-0123abcd.tmp"


def _run(config: dict):
    return run_compare(parse_config(config), progress=False)


def _count_hashes(monkeypatch) -> list[str]:
    """Record the name of every file sha256-hashed by the manifest from now on."""
    calls: list[str] = []
    real = manifest_mod.sha256_file

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(manifest_mod, "sha256_file", counting)
    return calls


# ---------------------------------------------------------------- items 1-3: whose folder


def test_only_our_temp_files_in_our_folders_are_removed(mini_config):
    out = Path(mini_config["output"])
    _run(mini_config)
    run_dir = next((out / "runs").iterdir())
    ours = [out / HEX_TEMP, run_dir / ".best.pt.r2t-deadbeef.tmp", out / "splits" / ".fold_0.csv.r2t-00ff00ff.tmp"]
    theirs = [out / "notes" / ".draft.txt.r2t-0123abcd.tmp",  # the user's own sub-folder
              out / ".x.r2t-notahex.tmp",  # not our name pattern
              out / ".vim-swap.tmp", run_dir / "keep.tmp"]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    _run(mini_config)
    assert not any(p.exists() for p in ours)
    assert all(p.read_text() == "x" for p in theirs)


@pytest.mark.parametrize("content", [
    {"notes.txt": "my notes"},
    {"results.csv": "run_id,aggregator\nmine,x\n", "manifest.json": '{"experiment": 3}'},  # someone else's manifest
    {"splits/splits_0.csv": "train,val,test\n"},  # a CLAM project's splits folder
])
def test_a_folder_that_is_not_ours_is_refused(mini_config, content):
    out = Path(mini_config["output"])
    for name, text in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputError, match="not an r2t compare folder|did not write") as info:
        _run(mini_config)
    assert str(out) in str(info.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing added (no lock either)
    assert all((out / n).read_text() == t for n, t in content.items())


def test_results_without_a_manifest_are_refused(mini_config):
    out = Path(mini_config["output"])
    _run(mini_config)
    (out / "manifest.json").unlink()
    results = (out / "results.csv").read_text()
    with pytest.raises(OutputError, match=r"holds .*results.csv, runs.* but no manifest.json .*start over"):
        _run(mini_config)
    assert (out / "results.csv").read_text() == results and not (out / "manifest.json").exists()


def test_manifest_is_marked_and_written_after_the_checks(mini_config, monkeypatch):
    import r2t_plugin.data as data

    out = Path(mini_config["output"])
    mini_config["folds"] = 500  # more folds than cases
    with pytest.raises(Exception, match="500"):
        _run(mini_config)
    assert not (out / "manifest.json").exists()
    mini_config["folds"] = 2
    real = data.load_or_make_folds

    def failing(*args, **kwargs):  # the splits cannot be made (e.g. a split check fails)
        raise SplitError("no splits today")

    monkeypatch.setattr(data, "load_or_make_folds", failing)
    with pytest.raises(SplitError, match="no splits today"):
        _run(mini_config)
    assert not (out / "manifest.json").exists()
    assert {p.name for p in out.iterdir()} <= {LOCK, HASH_CACHE}
    monkeypatch.setattr(data, "load_or_make_folds", real)
    assert len(_run(mini_config).rows) == 2  # the corrected start is not refused ("folds differ")
    assert json.loads((out / "manifest.json").read_text())["format"] == MANIFEST_FORMAT


# ---------------------------------------------------------------- items 4-5: feature hashes


def _two_same_named_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "features"
    files = [root / "s1" / "x.h5", root / "s2" / "x.h5"]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True)
        f.write_bytes(bytes([i]) * 100)
    (tmp_path / "cohort.csv").write_text("case_id,slide_id,label\n")
    return root, files


def test_feature_hashes_are_keyed_by_relative_path(tmp_path):
    root, files = _two_same_named_files(tmp_path)
    first = hash_data(tmp_path / "cohort.csv", files, [root])["feature_files"]
    assert sorted(first) == ["s1/x.h5", "s2/x.h5"] and first["s1/x.h5"] != first["s2/x.h5"]
    files[0].write_bytes(b"\x07" * 100)  # a change to the first of the two is seen
    assert hash_data(tmp_path / "cohort.csv", files, [root])["feature_files"]["s1/x.h5"] != first["s1/x.h5"]
    other = tmp_path / "more"
    assert feature_key(other / "s1" / "x.h5", [root, other]) == "features[1]/s1/x.h5"


def test_hash_cache_rehashes_only_changed_files(tmp_path, monkeypatch):
    root, files = _two_same_named_files(tmp_path)
    cache, csv = tmp_path / "out" / HASH_CACHE, tmp_path / "cohort.csv"
    calls = _count_hashes(monkeypatch)
    first = hash_data(csv, files, [root], cache)
    assert sorted(calls) == ["cohort.csv", "x.h5", "x.h5"]
    calls.clear()
    assert hash_data(csv, files, [root], cache) == first and calls == ["cohort.csv"]  # no feature file read
    st = files[1].stat()
    files[1].write_bytes(b"\x09" * 100)  # same size, new content
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # and a new mtime, as any edit gives
    calls.clear()
    changed = hash_data(csv, files, [root], cache)["feature_files"]
    assert calls == ["x.h5", "cohort.csv"]  # only the edited file
    assert changed["s2/x.h5"] != first["feature_files"]["s2/x.h5"] and changed["s1/x.h5"] == first["feature_files"]["s1/x.h5"]
    cache.write_text("{not json")  # a broken cache only costs a rehash
    assert hash_data(csv, files, [root], cache)["feature_files"] == changed


def test_a_second_launch_reads_no_feature_file_for_hashing(mini_config, monkeypatch):
    _run(mini_config)
    calls = _count_hashes(monkeypatch)
    _run(mini_config)
    assert calls == ["cohort.csv"]


# ---------------------------------------------------------------- item 6: slide ids


@pytest.mark.parametrize("slide_id", ["../outside", "/abs/outside", "sub/../../outside"])
def test_slide_ids_outside_the_features_folder_are_refused(tmp_path, slide_id):
    from r2t_plugin.data.readers import write_clam_h5
    import numpy as np

    (tmp_path / "features").mkdir()
    write_clam_h5(tmp_path / "outside.h5", np.ones((3, 4), np.float32), np.zeros((3, 2)), 256)  # readable, outside
    table = pd.DataFrame({"case_id": ["a", "b"], "slide_id": ["fine", slide_id], "label": [0, 1]})
    with pytest.raises(CohortError, match="point outside the feature folder") as info:
        Cohort(table, tmp_path / "features", label_col="label")
    assert slide_id in str(info.value) and "'fine'" not in str(info.value)


# ---------------------------------------------------------------- item 16: disk full


def test_disk_full_stops_the_grid_with_one_message(mini_config, monkeypatch, capsys):
    from r2t_plugin.cli import main

    from .conftest import write_yaml

    out = Path(mini_config["output"])
    real = r2t_io.atomic_write_bytes
    full = {"on": False}

    def filling(path, data):
        if full["on"]:  # what a full disk does: the write fails with ENOSPC and no file name
            with r2t_io.atomic_path(path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done = real(path, data)
        full["on"] = Path(path).name == "results.csv"  # full once the first run is committed
        return done

    monkeypatch.setattr(r2t_io, "atomic_write_bytes", filling)
    config = write_yaml(out.parent / "c.yaml", mini_config)
    assert main(["compare", config, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"r2t compare: no space left on device while writing {out / 'runs'}")
    rows = read_rows(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok"]  # the second run is not recorded as failed
    assert not list(out.rglob(r2t_io.TEMP_GLOB))


# ---------------------------------------------------------------- item 17: umask


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_output_file_follows_the_umask(mini_config, umask):
    old = os.umask(umask)
    try:
        _run(mini_config)
    finally:
        os.umask(old)
    out = Path(mini_config["output"])
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    names = {Path(n).name for n in modes}
    assert {"results.csv", "summary.md", "manifest.json", HASH_CACHE, LOCK, "fold_0.csv", "log.csv",
            "best.pt", "result.json", "predictions.csv", "metrics.png"} <= names, names
    want = {p: (0o777 if (out / p).is_dir() else 0o666) & ~umask for p in modes}
    assert modes == want
