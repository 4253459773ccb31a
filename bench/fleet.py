"""(e) Fleet simulation: 10,000 agents started within one minute, CreateSession calls per
minute over 24 hours, scheduled by the agent's own RefreshPolicy on a simulated clock.

Pure computation: no process, socket or sleep. Each agent asks for its first session when it
starts; every later call is a refresh at the moment `RefreshPolicy.next_refresh` picks.
"""

from __future__ import annotations

import random
from dataclasses import replace

from common import machine, report

from rolesanywhere_agent.sessions import RefreshPolicy

AGENTS = 10_000
START_WINDOW = 60.0
HORIZON = 24 * 3600.0
LIFETIME = 3600.0  # granted session length
GOAL = 1.5
SEED = 20261204


def simulate(policy: RefreshPolicy, seed: int) -> tuple[list[int], list[int]]:
    """Per-minute counts of first-session calls and of refresh calls."""
    rng = random.Random(seed)
    minutes = int(HORIZON // 60)
    firsts, refreshes = [0] * minutes, [0] * minutes
    for _ in range(AGENTS):
        now = rng.uniform(0, START_WINDOW)
        firsts[int(now // 60)] += 1
        now += policy.next_refresh(LIFETIME, rng, on_schedule=False)
        while now < HORIZON:
            refreshes[int(now // 60)] += 1
            now += policy.next_refresh(LIFETIME, rng, on_schedule=True)
    return firsts, refreshes


def peak_to_mean(counts: list[int]) -> float:
    return max(counts) / (sum(counts) / len(counts))


def main() -> None:
    print(f"fleet: {AGENTS} agents started within {START_WINDOW:g} s, {LIFETIME:g} s "
          f"sessions, 24 h; {machine()}")
    policy = RefreshPolicy()
    firsts, refreshes = simulate(policy, SEED)
    _, unspread = simulate(replace(policy, spread_after_start=False), SEED)
    total = [a + b for a, b in zip(firsts, refreshes, strict=True)]

    ratio = peak_to_mean(refreshes)
    report(
        "refresh calls/min, peak/mean (24 h)",
        f"{ratio:.2f} (peak {max(refreshes)}, mean {sum(refreshes) / len(refreshes):.0f})",
        f"< {GOAL}", ratio < GOAL,
    )
    print(f"  same fleet without phase spreading: peak/mean {peak_to_mean(unspread):.2f} "
          f"(peak {max(unspread)}/min)")
    print(f"  first sessions: {sum(firsts)} calls in the start minute (each agent needs one); "
          f"all calls incl. these: peak/mean {peak_to_mean(total):.2f}")


if __name__ == "__main__":
    main()
