"""A name read from a manifest, an index or a sweep file never becomes a path outside its root:
an absolute path, `..` or a stray separator is refused with an error naming the file and entry."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
from conftest import REPO

from data_pipeline import DataConfig, build_loader
from data_pipeline.safe_names import UnsafeNameError, inside, plain_name, relative_name
from data_pipeline.sources import synthetic_images
from data_pipeline.writers import write_splits
from launch.slurm_config import check_name
from launch.sweep import run_dir
from pretrain.scaling_laws.runner import run_sweep
from pretrain.scaling_laws.validate import ScalingDataError

N = 16


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "..", ".", "", "a\\b",
                                  "a//b", "x\0y"])
def test_relative_names_that_leave_the_root_are_refused(name):
    with pytest.raises(UnsafeNameError, match=r"^m\.json shards\[0\]\.name: entry .*refusing"):
        relative_name(name, "m.json shards[0].name")


def test_plain_names_refuse_separators_and_the_helpers_agree():
    assert inside("/r", "a.tar", "f") == "/r/a.tar"
    assert relative_name("sub/a.tar", "f") == "sub/a.tar"
    with pytest.raises(UnsafeNameError, match="separator"):
        plain_name("sub/a", "sweep.yaml runs[0].name")
    for bad in ("../../escape", "/abs", "..", "a/b"):
        with pytest.raises(ValueError, match="runs\\[0\\].name"):
            check_name(bad, "runs[0].name")  # launch's name rule goes through the same helper
        with pytest.raises(ValueError):
            run_dir("/root", bad)


@contextlib.contextmanager
def serve(directory: str):
    """A real HTTP server on loopback (as tests/test_data_remote.py uses) serving `directory`."""
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=directory))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _files_under(path) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(path) for f in files}


@pytest.mark.parametrize("fmt", ["wds", "mds"])
@pytest.mark.parametrize("hostile", ["absolute", "dotdot"])
def test_remote_manifest_with_absolute_or_dotdot_name_writes_nothing_outside(tmp_path, fmt,
                                                                             hostile):
    served, cache = tmp_path / "served", tmp_path / "cache"
    samples, meta = synthetic_images(N, size=4, channels=3, seed=1)
    write_splits(samples, str(served / "ds"), fmt, samples_per_shard=8, meta=meta)
    train = served / "ds" / "train"
    target = tmp_path / "victim" / "owned.bin"  # where the hostile name points
    bad = str(target) if hostile == "absolute" else "../../victim/owned.bin"
    listing = "index.json" if fmt == "mds" else "manifest.json"
    doc = json.loads((train / listing).read_text())
    if fmt == "mds":
        doc["shards"][1]["raw_data"]["basename"] = bad
        os.unlink(train / "manifest.json")  # the index alone describes a foreign MDS set
    else:
        doc["shards"][1]["name"] = bad
    (train / listing).write_text(json.dumps(doc))
    before = _files_under(tmp_path)
    with serve(str(served)) as base:
        url = f"{base}/ds/train"
        out = subprocess.run(
            [sys.executable, "-m", "pretrain", "data", "inspect", url, "--verify",
             "--format", fmt, "--cache-dir", str(cache)],
            cwd=REPO, capture_output=True, text=True, timeout=120)
        cfg = DataConfig(format=fmt, train_url=url, global_batch_size=8, num_workers=0,
                         cache_dir=str(cache))
        with pytest.raises(UnsafeNameError, match=rf"{listing} shards\[1\]"):
            next(iter(build_loader(cfg, 0, 1)))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and listing in lines[0] and repr(bad) in lines[0], out.stderr
    assert "verified" not in out.stdout
    assert not target.exists() and not target.parent.exists()
    outside = {p for p in _files_under(tmp_path) - before if not p.startswith(str(cache))}
    assert not outside


def test_scaling_run_names_stay_inside_the_root(tmp_path):
    """`pretrain scaling run` (and the study through run_sweep) with a run named ../../escape."""
    root = tmp_path / "a" / "b" / "runs"
    sweep = {"base": str(REPO / "configs" / "lm_bytes.yaml"),
             "runs": [{"name": "../../escape", "overrides": {}}]}
    with pytest.raises(ScalingDataError, match=r"\.\./\.\./escape"):
        run_sweep(sweep, root)
    assert not (tmp_path / "a" / "escape").exists() and not root.exists()
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(json.dumps(sweep))
    out = subprocess.run([sys.executable, "-m", "pretrain", "scaling", "run", str(sweep_file),
                          "--root", str(root)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "../../escape" in out.stderr, out.stderr
    assert not (tmp_path / "a" / "escape").exists() and not root.exists()
