"""The connectors' failure policy as small state machines: backoff and a circuit breaker.

Both take the time as an argument (``now``, seconds from any monotonic clock) and
never sleep themselves, so tests drive them with a fake clock; the connector
(:mod:`coby.exchanges`) does the sleeping with its injectable ``sleep``.
"""

from __future__ import annotations

import enum
import random


class Backoff:
    """Exponential backoff with jitter: ``initial * 2**n`` capped at ``maximum``, reset on success.

    Each delay is drawn uniformly from the upper half of the current step
    ("equal jitter"), so reconnects of many feeds spread out but never get shorter
    than half the step.
    """

    __slots__ = ("initial", "maximum", "attempts", "_random")

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.attempts = 0
        self._random = rng or random.Random()

    def step(self) -> float:
        """The un-jittered delay of the next attempt."""
        return min(self.maximum, self.initial * (2.0 ** min(self.attempts, 62)))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the following one."""
        step = self.step()
        self.attempts += 1
        return step / 2.0 + self._random.uniform(0.0, step / 2.0)

    def reset(self) -> None:
        self.attempts = 0


class CircuitState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per-venue breaker: opens after ``failures`` consecutive failures, probes after ``cooldown``.

    * closed: every attempt is allowed; a success resets the failure count.
    * open: no attempt until ``cooldown`` seconds have passed since it opened.
    * half-open: exactly one attempt (the probe) is allowed; its success closes the
      breaker, its failure opens it again for another ``cooldown``.

    ``record_failure`` / ``record_success`` return the new state when it changed
    (so the caller emits circuit_open / circuit_closed once), else None.
    """

    __slots__ = ("threshold", "cooldown", "state", "failures", "opened_at", "probe_owner")

    def __init__(self, failures: int, cooldown: float) -> None:
        if failures < 1 or cooldown <= 0:
            raise ValueError("circuit breaker needs failures >= 1 and cooldown > 0")
        self.threshold = failures
        self.cooldown = cooldown
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probe_owner: object | None = None

    def wait_time(self, now: float, who: object) -> float:
        """0.0 if ``who`` may attempt now; else seconds to wait before asking again.

        In half-open state the first caller becomes the probe; the others are told to
        wait (a short poll, since the probe's outcome decides what comes next).
        """
        if self.state is CircuitState.CLOSED:
            return 0.0
        if self.state is CircuitState.OPEN:
            remaining = self.opened_at + self.cooldown - now
            if remaining > 0:
                return remaining
            self.state = CircuitState.HALF_OPEN
            self.probe_owner = who
            return 0.0
        if self.probe_owner is None:  # the probe gave up without an outcome: next caller probes
            self.probe_owner = who
        return 0.0 if self.probe_owner is who else min(self.cooldown, 0.25)

    def record_success(self, who: object = None) -> CircuitState | None:
        self.failures = 0
        if self.state is CircuitState.CLOSED:
            return None
        if self.state is CircuitState.HALF_OPEN and self.probe_owner is not who and who is not None:
            return None  # a stray success from a non-probe (e.g. a late frame) does not close it
        self.state = CircuitState.CLOSED
        self.probe_owner = None
        return CircuitState.CLOSED

    def record_failure(self, now: float, who: object = None) -> CircuitState | None:
        if self.state is CircuitState.OPEN:
            return None
        if self.state is CircuitState.HALF_OPEN:
            if who is not None and self.probe_owner is not None and who is not self.probe_owner:
                return None
            return self._open(now)
        self.failures += 1
        if self.failures >= self.threshold:
            return self._open(now)
        return None

    def release(self, who: object) -> None:
        """``who`` stops without an outcome (e.g. it was cancelled): let another caller probe."""
        if self.probe_owner is who:
            self.probe_owner = None

    def _open(self, now: float) -> CircuitState:
        self.state = CircuitState.OPEN
        self.opened_at = now
        self.probe_owner = None
        return CircuitState.OPEN
