"""A wall-clock budget: a phase starts only when its estimated time still fits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Clock:
    """Time budget of one check run.

    Parameters
    ----------
    budget_s : float
        Seconds the whole run may take (the device command's own limit minus a margin for writing
        files and the interpreter's exit).
    """

    budget_s: float
    start: float = field(default_factory=time.perf_counter)
    skipped: list[dict] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def fits(self, what: str, estimate_s: float) -> bool:
        """True if ``estimate_s`` more seconds fit; otherwise records ``what`` as skipped."""
        if estimate_s <= self.left():
            return True
        self.skipped.append(
            {"what": what, "estimate_s": round(estimate_s, 2), "left_s": round(self.left(), 2)}
        )
        print(f"[gpu-check] skip {what}: needs ~{estimate_s:.0f} s, {self.left():.0f} s left", flush=True)
        return False
