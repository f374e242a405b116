"""Adaptive quality: choose the denoising step count per chunk so that generation holds real time.

The rule is a hysteresis on the real-time ratio r = compute time / media time of a chunk: two chunks in a
row over `high` step down (4 -> 2 -> 1), and a long run of chunks whose predicted ratio at the next level
up stays under `low` steps back up. Only when the lowest level is still behind does the session drop
media (see Session). Pure: no clocks, no engine; the session feeds it measured numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

from realtime.config import STEP_LEVELS


@dataclass(frozen=True)
class AdaptivePolicy:
    high: float = 0.9  # a chunk over 90% of its own duration leaves no room for decode jitter
    low: float = 0.6  # step up only if the higher level is predicted to stay under 60%
    down_after: int = 2  # consecutive slow chunks before stepping down
    up_after: int = 25  # consecutive fast chunks (about 4 s) before stepping up


class AdaptiveSteps:
    """State of the rule for one session. `update(compute_s, media_s)` returns the steps for the next chunk."""

    def __init__(self, steps: int, policy: AdaptivePolicy = AdaptivePolicy(), enabled: bool = True):
        self.steps, self.policy, self.enabled = steps, policy, enabled
        self.max_steps = steps  # never step above what the session asked for
        self._slow = self._fast = 0
        self.changes = 0

    @property
    def at_lowest(self) -> bool:
        return self.steps == STEP_LEVELS[-1]

    def update(self, compute_s: float, media_s: float) -> int:
        if not self.enabled or media_s <= 0:
            return self.steps
        ratio = compute_s / media_s
        level = STEP_LEVELS.index(self.steps)
        self._slow = self._slow + 1 if ratio > self.policy.high else 0
        up = STEP_LEVELS[level - 1] if level > 0 and STEP_LEVELS[level - 1] <= self.max_steps else None
        # the DiT's cost scales with the steps, the decode does not: scaling the whole ratio is pessimistic
        predicted = ratio * up / self.steps if up else float("inf")
        self._fast = self._fast + 1 if predicted < self.policy.low else 0
        if self._slow >= self.policy.down_after and not self.at_lowest:
            self._set(STEP_LEVELS[level + 1])
        elif up and self._fast >= self.policy.up_after:
            self._set(up)
        return self.steps

    def _set(self, steps: int) -> None:
        self.steps, self._slow, self._fast = steps, 0, 0
        self.changes += 1
