"""When to save: every N steps, on request (signal or RUN/SAVE_NOW), and once at the end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SavePolicy:
    """The trainer asks `due` after each step and `due_at_end` after the loop, and reports each
    save with `saved`. `last_saved` starts at the resumed step, so a run resumed at its last
    step does not write the same checkpoint again."""

    every_steps: int  # 0: no periodic saves
    save_at_end: bool
    last_saved: int = -1

    def due(self, step: int, stop: bool = False, save_now: bool = False) -> bool:
        periodic = bool(self.every_steps) and step % self.every_steps == 0
        return stop or save_now or periodic

    def due_at_end(self, step: int) -> bool:
        return self.save_at_end and self.last_saved != step

    def saved(self, step: int) -> None:
        self.last_saved = step
