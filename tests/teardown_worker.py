"""torchrun worker for tests/test_teardown.py: run one `pretrain` command in this process, then
record which threads are still alive once it has returned, as the interpreter would find them
at exit.

Usage: teardown_worker.py OUT_DIR pretrain-args...  Writes OUT_DIR/threads_rank<RANK>.json (the
thread names of /proc/self/task). A gloo process group's worker threads (`pt_gloo_runloop`,
`gloo_tcp_loop`) still alive here outlive the command and meet interpreter finalisation.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pretrain.cli import main


def thread_names() -> list[str]:
    names = []
    for task in sorted(Path("/proc/self/task").iterdir()):
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that ended while we listed
            continue
    return names


if __name__ == "__main__":
    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    try:
        main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    out = out_dir / f"threads_rank{os.environ['RANK']}.json"
    out.write_text(json.dumps(thread_names()))
