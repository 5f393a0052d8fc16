"""`pretrain data build text` killed mid-way continues: the finished shards are kept (not
rewritten) when they still hash to what the journal recorded, a damaged one is redone with
everything after it, and the result is byte for byte the shards of an uninterrupted build."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_pipeline.build_journal import JOURNAL_NAME
from data_pipeline.manifest import MANIFEST_NAME
from data_pipeline.text_build import build_tokenized_text
from data_pipeline.tokenizer import load_tokenizer
from tests.conftest import REPO, process_tree, subprocess_env
from tests.test_data_tokenizer import corpus  # noqa: F401 - the fixture

SEQ, PER_SHARD = 32, 40


def build_cmd(src, tok_dir, out, fmt: str) -> list[str]:
    return [sys.executable, "-m", "pretrain", "data", "build", "text", "--src", str(src),
            "--tokenizer", str(tok_dir), "--seq-len", str(SEQ), "--format", fmt, "--out",
            str(out), "--workers", "2", "--shard-samples", str(PER_SHARD)]


def journaled(split_dir) -> list[str]:
    """Stored file names of the journaled shards."""
    lines = (split_dir / JOURNAL_NAME).read_text().splitlines()[1:]
    names = []
    for line in lines:
        for record in json.loads(line)["records"]:
            names.append(record["name"] if "name" in record else
                         (record.get("zip_data") or record["raw_data"])["basename"])
    return names


def kill_when_journaled(cmd: list[str], split_dir, shards: int, timeout: float = 300) -> None:
    """SIGKILL the build and its tokenizing workers once `shards` shards are journaled."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    journal, deadline = split_dir / JOURNAL_NAME, time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                if len(journal.read_text().splitlines()) > shards:
                    for pid in process_tree(proc.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    break
            time.sleep(0.002)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"build ended (rc={proc.returncode}) unkilled"
    assert not (split_dir / MANIFEST_NAME).exists(), "killed after the split was finished"


def stamps(split_dir, names: list[str]) -> dict[str, tuple[int, int]]:
    return {n: (os.stat(split_dir / n).st_ino, os.stat(split_dir / n).st_mtime_ns)
            for n in names}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_killed_build_continues_without_redoing_finished_shards(
        corpus, tmp_path, fmt):  # noqa: F811
    src, tok_dir, _ = corpus
    ref = build_tokenized_text([str(src)], str(tmp_path / "ref"), fmt,
                               load_tokenizer(str(tok_dir)), SEQ, shard_samples=PER_SHARD)
    out = tmp_path / "out"
    cmd = build_cmd(src, tok_dir, out, fmt)
    kill_when_journaled(cmd, out / "train", 4)
    done = journaled(out / "train")
    assert len(done) >= 4
    # the third journaled shard is damaged after the crash: it and those after it are redone
    damaged = out / "train" / done[2]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    before = stamps(out / "train", done)

    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = stamps(out / "train", done)
    assert after[done[0]] == before[done[0]] and after[done[1]] == before[done[1]]  # kept
    assert after[done[2]] != before[done[2]]  # rewritten
    for split, manifest in ref.items():
        got = json.loads((out / split / MANIFEST_NAME).read_text())
        assert [s["sha256"] for s in got["shards"]] == [s.sha256 for s in manifest.shards]
        assert [s["samples"] for s in got["shards"]] == [PER_SHARD] * (len(got["shards"]) - 1) \
            + [manifest.shards[-1].samples]
        assert got["meta"] == manifest.meta
    # a finished build run again verifies every shard and rewrites none
    names = journaled(out / "train")
    finished = stamps(out / "train", names)
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stamps(out / "train", names) == finished


def test_a_journal_is_not_trusted(corpus, tmp_path):  # noqa: F811
    """Entries whose position is impossible, torn lines, or a journal of other settings: the
    build keeps only what precedes them and still writes the shards of an uninterrupted build."""
    src, tok_dir, _ = corpus
    tok = load_tokenizer(str(tok_dir))
    ref = build_tokenized_text([str(src)], str(tmp_path / "ref"), "wds", tok, SEQ,
                               shard_samples=PER_SHARD)
    out = tmp_path / "out"
    build_tokenized_text([str(src)], str(out), "wds", tok, SEQ, shard_samples=PER_SHARD)
    journal = out / "train" / JOURNAL_NAME
    lines = journal.read_text().splitlines()
    kept = stamps(out / "train", journaled(out / "train")[:2])
    bad = json.loads(lines[3])
    bad["position"]["docs"] = 10**9  # past the end of the documents
    journal.write_text("\n".join([*lines[:3], json.dumps(bad), *lines[4:]]) + "\n{torn")
    redone = build_tokenized_text([str(src)], str(out), "wds", tok, SEQ, shard_samples=PER_SHARD)
    assert stamps(out / "train", list(kept)) == kept
    assert len(journal.read_text().splitlines()) == len(lines)  # rebuilt from the bad entry
    (out / "val" / JOURNAL_NAME).write_text(json.dumps({"version": 0}) + "\n")  # other settings
    redone = build_tokenized_text([str(src)], str(out), "wds", tok, SEQ, shard_samples=PER_SHARD)
    for split, manifest in ref.items():
        assert [s.sha256 for s in redone[split].shards] == [s.sha256 for s in manifest.shards]
