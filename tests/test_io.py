"""The one atomic write and the directory lock."""

import os
import threading
import time

import pytest
import torch

from facetrip.io import atomic_torch_save, atomic_write, locked


def _leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_writes_bytes_text_and_writer_functions(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write(tmp_path / "sub" / "b.txt", "héllo").read_text("utf-8") == "héllo"
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"xyz"))
    assert (tmp_path / "c.bin").read_bytes() == b"xyz"
    assert os.stat(tmp_path / "c.bin").st_mode & 0o777 == 0o644
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.arange(3))
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = atomic_write(tmp_path / "ckpt.pt", b"old")

    def broken(f):
        f.write(b"half")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_the_lock_orders_threads(tmp_path):
    order = []

    def worker(name):
        with locked(tmp_path / "d" / ".lock"):
            order.append(f"{name} in")
            time.sleep(0.05)
            order.append(f"{name} out")

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


def test_a_write_that_is_not_durable_skips_only_the_fsyncs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", calls.append)
    atomic_write(tmp_path / "a.bin", b"xyz", durable=False)
    assert (tmp_path / "a.bin").read_bytes() == b"xyz" and calls == []
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary left
    atomic_write(tmp_path / "a.bin", b"new")
    assert len(calls) == 2 and (tmp_path / "a.bin").read_bytes() == b"new"  # file + directory
