"""DCP I/O (pretrain/checkpoint/dcp_io.py, writeback.py): write-behind files write exact bytes,
the kernel hint is really taken, what they write stays a plain DCP checkpoint that torch's own
reader loads; and nothing is loaded through unrestricted unpickling."""

from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from pretrain.checkpoint import UnsafeCheckpointError, dcp_io, read_metadata
from pretrain.checkpoint.writeback import WritebackFile
from tests.conftest import REPO


def test_bytes_written_in_odd_sizes_come_back_exact(tmp_path):
    rng = torch.Generator().manual_seed(0)
    pieces = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=rng).numpy().tobytes()
              for n in (1, 4095, 70_000, 1 << 16, 333, 200_001, 7)]
    path = tmp_path / "f.bin"
    with WritebackFile(path, chunk=50_000) as f:
        for p in pieces:
            assert f.write(p) == len(p)
        assert f.tell() == sum(map(len, pieces))
        handed_off = f._handed_off
    assert path.read_bytes() == b"".join(pieces)
    assert 0 < handed_off <= path.stat().st_size  # writeback was started along the way


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux-only")
def test_kernel_accepts_the_writeback_hint_on_this_file_system(tmp_path):
    with WritebackFile(tmp_path / "f.bin", chunk=1 << 20) as f:
        f.write(os.urandom(3 << 20))
        assert f._hints, "sync_file_range failed: writes fall back to plain buffering"


def test_checkpoint_loads_with_torchs_stock_reader(tmp_path):
    """The writer only changes how bytes reach the disk, not the format: a checkpoint it wrote
    loads through torch's unmodified FileSystemReader."""
    state = {
        "w": torch.randn(300, 700),
        "b": torch.arange(10),
        "nested": {"x": torch.ones(3, dtype=torch.bfloat16)},
    }
    dcp_io.save(state, tmp_path / "ckpt")
    target = {
        "w": torch.zeros(300, 700),
        "b": torch.zeros(10, dtype=torch.long),
        "nested": {"x": torch.zeros(3, dtype=torch.bfloat16)},
    }
    dcp.load(target, storage_reader=FileSystemReader(str(tmp_path / "ckpt")))
    assert torch.equal(target["w"], state["w"]) and torch.equal(target["b"], state["b"])
    assert torch.equal(target["nested"]["x"], state["nested"]["x"])


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/pretrain_pwned"),))


def test_malicious_dcp_metadata_is_refused_without_running_it(tmp_path):
    marker = Path("/tmp/pretrain_pwned")
    marker.unlink(missing_ok=True)
    ckpt = tmp_path / "ckpt"
    dcp_io.save({"w": torch.randn(4, 4)}, ckpt / "model")
    (ckpt / "model/.metadata").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(UnsafeCheckpointError, match="not a DCP metadata type"):
        read_metadata(ckpt / "model")
    assert not marker.exists()


def test_no_unrestricted_unpickling_in_the_code():
    """Every torch.load passes weights_only=True; nothing calls pickle.load(s) directly."""
    offenders = []
    for path in [
        *REPO.glob("pretrain/**/*.py"),
        *REPO.glob("data_pipeline/**/*.py"),
        *REPO.glob("launch/**/*.py"),
    ]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pickle\.loads?\(|weights_only\s*=\s*False", line) or (
                "torch.load(" in line and "weights_only=True" not in line
            ):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, offenders
