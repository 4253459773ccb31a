"""Wall-clock time, passed in everywhere so that tests can move it without sleeping."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol

# Long waits are cut into slices so that a wall-clock jump (suspend/resume, an NTP step) is
# noticed within one slice: the event loop's timers run on the monotonic clock, which stands
# still while a VM sleeps.
WAIT_SLICE_SECONDS = 30.0


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that only moves when told to; sleepers wake when it passes their deadline."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + timedelta(seconds=seconds), waiter))
        try:
            await waiter
        finally:
            self._sleepers = [(d, w) for d, w in self._sleepers if w is not waiter]

    def advance(self, seconds: float) -> None:
        self.set(self._now + timedelta(seconds=seconds))

    def jump(self, seconds: float) -> None:
        """Move the wall clock without waking any timer, as a VM resumed from sleep sees it."""
        self._now += timedelta(seconds=seconds)

    def set(self, moment: datetime) -> None:
        self._now = moment
        for deadline, waiter in self._sleepers:
            if deadline <= moment and not waiter.done():
                waiter.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, w in self._sleepers if not w.done())


async def sleep_until(clock: Clock, deadline: datetime) -> None:
    """Wait until the wall clock reaches `deadline`, re-reading it at least every slice."""
    while True:
        remaining = (deadline - clock.now()).total_seconds()
        if remaining <= 0:
            return
        await clock.sleep(min(remaining, WAIT_SLICE_SECONDS))
