"""When a SIGKILL test kills: a delay steered so that the kills land inside the work they interrupt."""

from __future__ import annotations

import random


class KillWindow:
    """Where the next kill lands: a delay drawn from [0, width), the width steered by where past kills landed.

    A transfer or an exchange takes a few milliseconds on a fast machine and tens on a slow one (hundreds right
    after a restart), so a fixed window lands most kills before or after it on one of them (CI's machine once put
    only 8 of 100 kills inside a transfer). A kill that found the work not yet begun widens the window, one that
    found it over narrows it: the draws gather around the work itself.
    """

    def __init__(self, rng: random.Random, width_s: float = 0.03, *, max_s: float = 0.5) -> None:
        self.rng = rng
        self.width_s = width_s
        self.max_s = max_s

    def draw(self) -> float:
        return self.rng.uniform(0.0, self.width_s)

    def saw(self, early: bool, late: bool) -> None:
        if early:
            self.width_s = min(self.max_s, self.width_s * 1.3)
        elif late:
            self.width_s = max(0.0005, self.width_s * 0.75)


class PointWindow:
    """Where the next kill lands in work that passes through several points in turn (a purchase: its pages, its
    payment, ...), aimed at one of them so that every point gets hit, not only the long ones.

    Half the draws aim: a delay between the earliest and the latest that landed on the point aimed at (widened by a
    quarter and 5 ms, so the aim follows the machine's load); the other half, and every draw at a point not hit yet,
    fall anywhere in the window, which starts as long as one undisturbed run, narrows when a kill found the work
    over and widens when one found it at its last point.
    """

    def __init__(self, rng: random.Random, points: tuple[str, ...], width_s: float, *, keep: int = 20) -> None:
        self.rng = rng
        self.points = points
        self.width_s = width_s
        self.max_s = 2 * width_s
        self.keep = keep
        self.landed: dict[str, list[float]] = {p: [] for p in points}

    def draw(self, aim: str) -> float:
        seen = self.landed[aim]
        if seen and self.rng.random() < 0.5:
            lo, hi = min(seen), max(seen)
            pad = (hi - lo) / 4 + 0.005
            return self.rng.uniform(max(0.0, lo - pad), hi + pad)
        return self.rng.uniform(0.0, self.width_s)

    def saw(self, point: str | None, delay_s: float) -> None:
        """The kill after ``delay_s`` landed on ``point`` (None: the work was over)."""
        if point is None:
            self.width_s = max(0.001, self.width_s * 0.9)
            return
        if point == self.points[-1]:
            self.width_s = min(self.max_s, self.width_s * 1.05)
        self.landed[point] = [*self.landed[point], delay_s][-self.keep :]
