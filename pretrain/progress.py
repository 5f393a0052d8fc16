"""Progress output that suits where it goes, and third-party warnings shown once.

On a terminal a tqdm bar redraws in place; into a file (a Slurm log, `> out.txt`) every redraw
would be one more `\\r` frame, so there a plain line is printed every `logging.every_steps`
steps instead. Libraries that warn on every step (ZeRO-3's FutureWarning, ...) would bury the
log: each distinct warning (category, message) is shown once per process.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, TextIO


class ProgressLines:
    """`step N/T loss=... lr=...` every `every_steps` steps (and at the last), one line each."""

    def __init__(self, total_steps: int, every_steps: int, stream: TextIO):
        self.total, self.every, self.stream = total_steps, max(1, every_steps), stream

    def update(self, step: int, loss: float, lr: float) -> None:
        if step % self.every == 0 or step == self.total:
            print(f"[pretrain] step {step}/{self.total} loss={loss:.4f} lr={lr:.2e}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        pass


class ProgressBar:
    """A tqdm bar, redrawn at each update (terminals only)."""

    def __init__(self, total_steps: int, start_step: int, stream: TextIO):
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        dynamic_ncols=True, file=stream)

    def update(self, step: int, loss: float, lr: float) -> None:
        self.bar.n = step
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def make_progress(total_steps: int, start_step: int, every_steps: int,
                  stream: TextIO | None = None) -> ProgressBar | ProgressLines:
    """A bar when `stream` (default stderr) is a terminal, else lines every `every_steps`."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return ProgressBar(total_steps, start_step, stream)
    return ProgressLines(total_steps, every_steps, stream)


_seen_warnings: set[tuple[type, str]] = set()


def show_each_warning_once() -> None:
    """Show each distinct warning once per process, whatever filters a library sets later
    (some set "always"); idempotent."""
    show = warnings.showwarning
    if getattr(show, "shows_once", False):
        return

    def show_once(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        key = (category, str(message))
        if key in _seen_warnings:
            return
        _seen_warnings.add(key)
        show(message, category, *args, **kwargs)

    show_once.shows_once = True  # type: ignore[attr-defined]
    warnings.showwarning = show_once
