"""The agent's send rate: a cap in batches and in bytes over any one-second window.

Each cap is a token bucket whose tokens come back one second after they were spent. The
textbook bucket refills at a constant rate instead, and a full one lets its whole capacity
through at once and then a second's refill within the same second: up to twice the rate in
one window, which is what a metered link got (4 batches back to back every 0.81 s, so 8 in
one second where 5 were promised). Here what was spent in any window of `period` seconds
never passes the capacity, so the promise holds for every second, not on average.

aiolimiter's AsyncLimiter is the constant-rate kind, with the same doubling; the `limits`
package's moving window is exact but keeps one timestamp per unit of cost, which for a
batch's bytes would be hundreds of thousands of entries a batch. Hence this small one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

# Float sums of costs may be off in the last bits; a spend that fits up to this is taken.
_SLACK = 1e-9


class TokenBucket:
    """`capacity` tokens; a spend of `cost` takes them for `period` seconds, so the costs
    spent in any half-open window of `period` seconds add up to at most `capacity`.

    A single cost larger than the whole capacity (a reading larger than a whole second's
    byte cap) would never fit: it is taken when the bucket is full and holds it for
    `period * cost / capacity` seconds, so the long-run rate still holds. Time is whatever
    clock the caller passes (seconds, monotonic); nothing here sleeps."""

    def __init__(self, capacity: float, period: float = 1.0) -> None:
        """`capacity` tokens, each spend held for `period` seconds; ValueError unless both are
        positive."""
        if capacity <= 0 or period <= 0:
            raise ValueError(
                f"a token bucket needs a positive capacity and period, not {capacity} and {period}"
            )
        self.capacity = capacity
        self.period = period
        self._spent: deque[tuple[float, float]] = deque()  # (when it comes back, cost)
        self._in_use = 0.0

    def _return_due(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now:
            self._in_use -= self._spent.popleft()[1]
        if not self._spent:
            self._in_use = 0.0  # no float residue once everything is back

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds from `now` until `cost` tokens are free (0.0: they are now)."""
        self._return_due(now)
        if cost > self.capacity:
            return self._spent[-1][0] - now if self._spent else 0.0
        in_use = self._in_use
        if in_use + cost <= self.capacity + _SLACK:
            return 0.0
        for back_at, spent in self._spent:
            in_use -= spent
            if in_use + cost <= self.capacity + _SLACK:
                return back_at - now
        return 0.0  # unreachable: everything back frees the whole capacity

    def spend(self, cost: float, now: float) -> None:
        """Take `cost` tokens at `now`; the caller has checked `wait_s(cost, now) == 0`."""
        hold = self.period * max(1.0, cost / self.capacity)
        self._spent.append((now + hold, cost))
        self._in_use += cost


class SendRate:
    """`--max-batches-per-s` and `--max-bytes-per-s` together: `acquire(nbytes)` waits until
    one more batch of `nbytes` bytes fits both, takes it, and returns the time it was
    granted (the clock's seconds). Callers are served in turn.

    A batch rate under 1 a second becomes 1 batch per 1/rate seconds."""

    def __init__(
        self,
        batches_per_s: float,
        bytes_per_s: int,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Caps of `batches_per_s` and `bytes_per_s`; `clock` gives seconds (default: the running
        event loop's). ValueError unless both rates are positive."""
        if batches_per_s <= 0 or bytes_per_s <= 0:
            raise ValueError("send rates must be positive")
        if batches_per_s >= 1:
            self.batches = TokenBucket(batches_per_s, 1.0)
        else:
            self.batches = TokenBucket(1, 1.0 / batches_per_s)
        self.bytes = TokenBucket(bytes_per_s, 1.0)
        self.bytes_per_s = bytes_per_s
        self._clock = clock
        self._turn = asyncio.Lock()

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def acquire(self, nbytes: int) -> float:
        """Wait until one more batch of `nbytes` bytes fits both caps, take it, and return the
        clock's time at which it was granted."""
        async with self._turn:
            while True:
                now = self._now()
                wait = max(self.batches.wait_s(1, now), self.bytes.wait_s(nbytes, now))
                if wait <= 0:
                    self.batches.spend(1, now)
                    self.bytes.spend(nbytes, now)
                    return now
                # asyncio may wake a timer up to its clock resolution early: check again.
                await asyncio.sleep(wait)
