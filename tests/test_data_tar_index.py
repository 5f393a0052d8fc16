"""The fast tar index agrees with tarfile on ustar, GNU and pax archives and rejects damage."""

from __future__ import annotations

import io
import tarfile

import pytest

from data_pipeline.tar_index import TarFormatError, scan_tar


def make_tar(path, fmt: int, names: list[str]) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = bytes([i % 256]) * (i * 37 + 1)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000.5  # float mtime: pax records too
            tar.addfile(info, io.BytesIO(data))


def reference(path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


LONG = "deep/" * 30 + "sample.with.dots.png"
NAMES = ["000001.png", "000001.cls", "dir/000002.jpg", LONG, "ünïcode.txt"]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_matches_tarfile(tmp_path, fmt):
    names = NAMES if fmt != tarfile.USTAR_FORMAT else NAMES[:3]
    make_tar(tmp_path / "t.tar", fmt, names)
    assert scan_tar(str(tmp_path / "t.tar")) == reference(tmp_path / "t.tar")
    assert [m[0] for m in scan_tar(str(tmp_path / "t.tar"))] == names


def test_corrupt_header_is_reported_with_offset(tmp_path):
    make_tar(tmp_path / "t.tar", tarfile.USTAR_FORMAT, NAMES[:3])
    raw = bytearray((tmp_path / "t.tar").read_bytes())
    second = reference(tmp_path / "t.tar")[1][1] - 512
    raw[second + 10] ^= 0x55  # inside the name of the second header
    (tmp_path / "t.tar").write_bytes(bytes(raw))
    with pytest.raises(TarFormatError) as err:
        scan_tar(str(tmp_path / "t.tar"))
    assert err.value.offset == second and "checksum" in str(err.value)


def test_truncated_inside_data(tmp_path):
    make_tar(tmp_path / "t.tar", tarfile.USTAR_FORMAT, NAMES[:3])
    last = reference(tmp_path / "t.tar")[-1]
    with open(tmp_path / "t.tar", "r+b") as f:
        f.truncate(last[1] + 1)
    with pytest.raises(TarFormatError, match="ends at byte"):
        scan_tar(str(tmp_path / "t.tar"))
