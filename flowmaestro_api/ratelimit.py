"""Per-hook rate limits: each webhook trigger accepts so many deliveries per window.

A flood at one public URL must not become a flood of executions (or of database writes), so
the check comes right after the hook is found and before the body is read or anything is
recorded. The counting is the `limits` library's moving window; its storage is in this
process (`memory://`) or shared by every API process (`redis://...`).
"""

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from flowmaestro_api.errors import TooManyRequests


def parse_limits(text: str) -> list[RateLimitItem]:
    """`"20/second;600/minute"` (the `limits` notation); empty or `none`: no limit."""
    text = text.strip()
    if not text or text.lower() == "none":
        return []
    return parse_many(text)


class HookRateLimiter:
    """Counts deliveries per (workflow, trigger) against every configured window."""

    def __init__(self, limits: str, storage: str = "memory://") -> None:
        self.items = parse_limits(limits)
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage))

    def check(self, workflow_id: str, trigger_id: str) -> None:
        """Count one delivery; `TooManyRequests` (with `Retry-After`) past any window."""
        over: list[RateLimitItem] = []
        for item in self.items:  # every window counts the delivery, even after one refused it
            if not self._limiter.hit(item, "hook", workflow_id, trigger_id):
                over.append(item)
        if not over:
            return
        reset = max(
            self._limiter.get_window_stats(item, "hook", workflow_id, trigger_id).reset_time
            for item in over
        )
        wait = max(1, math.ceil(reset - time.time()))
        windows = ", ".join(str(item) for item in over)
        raise TooManyRequests(
            f"this webhook accepts at most {windows}; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
