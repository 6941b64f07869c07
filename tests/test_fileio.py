import os

import pytest

from trainframe import fileio
from trainframe.errors import UserError
from trainframe.fileio import (
    TEMP_GLOB,
    atomic_dir,
    atomic_path,
    temp_path,
    write_bytes_atomic,
    write_text_atomic,
    writing,
)


def test_replaces_the_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("existed", [True, False])
def test_an_exception_removes_the_temp_and_leaves_the_target(tmp_path, existed):
    target = tmp_path / "out.txt"
    if existed:
        target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == (["out.txt"] if existed else [])
    if existed:
        assert target.read_text() == "old"


def test_temp_keeps_the_suffix_is_per_process_and_matches_the_stale_glob(tmp_path):
    for name, suffix in (("curves.png", ".png"), ("chunk_00000.bin", ".bin"), ("metrics.jsonl", ".jsonl"),
                         ("noext", ".tmp")):
        tmp = temp_path(tmp_path / name)
        assert tmp.suffix == suffix
        assert str(os.getpid()) in tmp.name
        assert tmp.match(TEMP_GLOB)
    assert not (tmp_path / "chunk_00000.bin").match(TEMP_GLOB)


def test_fsync_runs_before_the_replace(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(target.exists())  # the target must not exist yet
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    with atomic_path(target, fsync=True) as tmp:
        tmp.write_bytes(b"\x00\x01")
    assert synced == [False] and target.read_bytes() == b"\x00\x01"
    with atomic_path(tmp_path / "other", fsync=False) as tmp:
        tmp.write_bytes(b"")
    assert synced == [False]


def test_thin_wrappers(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    write_bytes_atomic(tmp_path / "b.bin", b"\xff\x00")
    assert (tmp_path / "a.txt").read_text() == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\xff\x00"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]



def test_atomic_dir_replaces_or_keeps_an_existing_directory(tmp_path):
    target = tmp_path / "out"
    for text in ("old", "new"):
        with atomic_dir(target) as tmp:
            (tmp / "f").write_text(text)
    assert (target / "f").read_text() == "new"
    # A content-keyed cache: a copy another process published first stays, ours goes.
    with atomic_dir(target, keep_existing=True) as tmp:
        (tmp / "f").write_text("ours")
    assert (target / "f").read_text() == "new"
    with pytest.raises(ValueError), atomic_dir(tmp_path / "half", keep_existing=True) as tmp:
        (tmp / "f").write_text("half")
        raise ValueError("the input ended early")
    with atomic_dir(tmp_path / "fresh", keep_existing=True) as tmp:
        (tmp / "f").write_text("first")
    assert (tmp_path / "fresh" / "f").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]  # no temporaries, nothing half

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_line_even_through_torch_save(tmp_path):
    # torch.save reports the kernel's ENOSPC as a RuntimeError raised while handling it
    import torch

    with pytest.raises(UserError, match=r"^x.pt: no space left on the device while writing the checkpoint "
                                        r"\(needs about 0.4 MB, [\d,.]+ MB free there\)$"):
        with writing("x.pt", "the checkpoint", 400_000), open("/dev/full", "wb") as f:
            torch.save({"w": torch.zeros(100_000)}, f)


def test_refused_writes_are_one_line(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path}/no/x: cannot write the plot: the folder {tmp_path}/no does not"):
        write_text_atomic(tmp_path / "no" / "x", "", "the plot")
    # Rust libraries (safetensors, tokenizers) spell the OSError out
    with pytest.raises(UserError, match="^t.json: cannot write: Permission denied$"), writing("t.json"):
        raise Exception("Permission denied (os error 13)")
    with pytest.raises(ValueError), writing("t.json"):  # anything else passes
        raise ValueError("not a write error")
    assert list(tmp_path.iterdir()) == []
