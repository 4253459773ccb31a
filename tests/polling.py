"""Waiting on a condition with a deadline, never on a guessed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

DEADLINE_SECONDS = 10.0


async def until(
    condition: Callable[[], object], what: str, timeout: float = DEADLINE_SECONDS
) -> None:
    """Poll `condition` until it is true; fail naming `what` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.005)


def until_sync(
    condition: Callable[[], object], what: str, timeout: float = DEADLINE_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


async def attempt_at(stack, moment: datetime | None = None, profile: str = "web") -> None:
    """Move the fake clock to `moment` (default: the planned attempt); wait for that attempt."""
    session = stack.agent.sessions[profile]
    attempts = session.attempts
    stack.clock.set(moment or session.next_attempt_at)
    await until(lambda: session.attempts > attempts, f"a refresh attempt of {profile}")
