"""A time budget per request: the pipeline checks it between its steps (before stage 1, before
each batch of refinement states), so a request that would hold the server past the budget
stops with a clear error after at most one more step (each step is bounded: the crop, the
work grid and the number of clicks per request are capped)."""

from __future__ import annotations

import time

DEFAULT_BUDGET_S = 60.0


class BudgetExceeded(RuntimeError):
    """The request ran past its time budget (HTTP 503: the server is too slow for it now)."""


class Deadline:
    """``seconds`` from now; :meth:`check` raises :class:`BudgetExceeded` once past it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def check(self, step: str) -> None:
        """Raise :class:`BudgetExceeded` naming ``step`` (what was about to run) when past."""
        if self.elapsed() > self.seconds:
            raise BudgetExceeded(
                f"the request ran past its time budget of {self.seconds:g} s (stopped before {step} after "
                f"{self.elapsed():.1f} s); fewer clicks per request, or --conf request_budget_s, raise what fits"
            )


class StartDeadline:
    """Pipeline step: ``data["deadline"]``, a :class:`Deadline` of ``seconds`` from now."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)

    def __call__(self, data: dict) -> dict:
        data["deadline"] = Deadline(self.seconds)
        return data
