"""Atomic writes (old file or complete new one, no stray temp file, umask respected), hashes, names."""
import hashlib
import json
import os
import stat

import h5py
import numpy as np
import pytest
import torch

from r2t_plugin.io import (TEMP_GLOB, atomic_h5, atomic_path, atomic_torch_save, atomic_write,
                           atomic_write_bytes, atomic_write_json, atomic_write_text, is_temp_file,
                           describe_os_error, safe_name, sha256_file)


def test_writers_round_trip(tmp_path) -> None:
    assert atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01") == tmp_path / "a" / "b.bin"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "t.csv", "x,y\r\n1,2\n")
    assert (tmp_path / "t.csv").read_bytes() == b"x,y\r\n1,2\n"  # newlines kept as given
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "j.json").read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["w"], torch.arange(3))
    with atomic_h5(tmp_path / "f.h5") as f:
        f.create_dataset("features", data=np.ones((2, 3), dtype=np.float32))
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["features"].shape == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "f.h5", "j.json", "m.pt", "t.csv"]


def test_replaces_an_existing_file(tmp_path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path, error) -> None:
    target = tmp_path / "x.h5"
    target.write_bytes(b"old")
    seen = []

    def broken(tmp: str) -> None:
        seen.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise error("disk full")

    with pytest.raises(error, match="disk full"):
        atomic_write(target, broken)
    with pytest.raises(ValueError), atomic_h5(target) as f:
        f.create_dataset("features", data=np.zeros(3))
        raise ValueError("reader failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]
    assert seen and os.path.dirname(seen[0]) == str(tmp_path)  # same folder: os.replace is atomic


def test_temp_names_are_recognisable(tmp_path) -> None:
    with atomic_path(tmp_path / "fold_0.csv") as tmp:
        assert tmp.parent == tmp_path
        assert is_temp_file(tmp) and tmp.name.startswith(".fold_0.csv.r2t-")
        assert list(tmp_path.glob(TEMP_GLOB)) == [tmp]
        tmp.write_text("x")
    assert not is_temp_file(tmp_path / "fold_0.csv")
    assert not is_temp_file(tmp_path / ".fold_0.csv.tmp")  # someone else's temp file
    assert not is_temp_file(tmp_path / "fold_0.r2t-0123abcd.tmp")  # not hidden
    with atomic_path(tmp_path / ("n" * 250)) as tmp:  # a long name still fits in NAME_MAX
        assert len(tmp.name) < 255 and is_temp_file(tmp)
        tmp.write_text("x")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save({}, tmp_path / "b.pt")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for name in ("a.txt", "b.pt", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_sha256_file(tmp_path) -> None:
    data = os.urandom(3000)
    (tmp_path / "d").write_bytes(data)
    assert sha256_file(tmp_path / "d", chunk=1024) == hashlib.sha256(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


def test_safe_name() -> None:
    assert safe_name("abmil+r2t/seed 1") == "abmil-r2t-seed-1"
    assert safe_name("TCGA-AB-1234.svs") == "TCGA-AB-1234.svs"
    assert safe_name("a//b::c") == "a-b-c"


@pytest.mark.parametrize("write", [lambda p: atomic_torch_save({"w": torch.ones(3)}, p),
                                   lambda p: atomic_write_text(p, "new")])
def test_a_full_disk_is_an_oserror_naming_the_target(tmp_path, monkeypatch, write) -> None:
    import errno

    import r2t_plugin.io as r2t_io

    target = tmp_path / "best.pt"
    target.write_bytes(b"old")

    def full(fd):  # delayed allocation: a full disk often shows only at fsync
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(r2t_io.os, "fsync", full)
    with pytest.raises(OSError) as info:
        write(target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert describe_os_error(info.value).startswith(f"no space left on device while writing {target};")
