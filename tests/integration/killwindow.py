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
