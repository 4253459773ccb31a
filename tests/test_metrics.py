"""`GET /metrics`: exact values after known requests and refreshes, and no secret anywhere."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from rolesanywhere_agent.emulator import Fault
from rolesanywhere_agent.endpoints.metrics import UNMATCHED

from .conftest import START

CREDENTIALS = "/v1/credentials/{profile}"
P = "rolesanywhere_agent_"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(stack) -> tuple[str, Samples]:
    async with stack.http.get(f"{stack.base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((P + name, frozenset(labels.items())))


async def test_request_counts_are_exact_by_endpoint_and_status(stack_factory) -> None:
    stack = await stack_factory(leaves=(("web", "p256"),))

    assert (await stack.get("web"))[0] == 200
    assert (await stack.get("web"))[0] == 200
    assert (await stack.get("web", Authorization="wrong-token-value"))[0] == 401
    assert (await stack.get("web", Host="evil.example"))[0] == 403
    async with stack.http.get(f"{stack.base}/v1/credentials/nobody") as response:
        assert response.status == 404
    async with stack.http.get(f"{stack.base}/health") as response:
        assert response.status == 200
    async with stack.http.get(f"{stack.base}/no/such/path") as response:
        assert response.status == 404
    await scrape(stack)  # counted once it has been answered, so it shows in the next scrape
    _, samples = await scrape(stack)

    requests = {
        (dict(labels)["endpoint"], dict(labels)["status"]): count
        for (name, labels), count in samples.items()
        if name == P + "http_requests_total"
    }
    assert requests == {
        (CREDENTIALS, "200"): 2,
        (CREDENTIALS, "401"): 1,
        (CREDENTIALS, "403"): 1,
        (CREDENTIALS, "404"): 1,
        ("/health", "200"): 1,
        (UNMATCHED, "404"): 1,
        ("/metrics", "200"): 1,
    }


async def test_session_gauges_follow_the_clock(stack_factory) -> None:
    stack = await stack_factory(leaves=(("web", "p256"),))
    not_after = stack.world.leaves["web"].certificate.not_valid_after_utc.timestamp()

    _, samples = await scrape(stack)
    stack.clock.advance(600)
    _, later = await scrape(stack)

    assert value(samples, "session_expiry_seconds", profile="web") == 3600
    assert value(later, "session_expiry_seconds", profile="web") == 3000
    assert value(samples, "certificate_not_after_timestamp_seconds", profile="web") == not_after
    assert value(later, "last_refresh_success_timestamp_seconds", profile="web") == (
        START.timestamp()
    )
    states = {
        dict(labels)["state"]: flag
        for (name, labels), flag in later.items()
        if name == P + "profile_state"
    }
    assert states == {"starting": 0, "ready": 1, "degraded": 0, "unavailable": 0}


async def test_refresh_outcomes_and_latency_histogram(stack_factory) -> None:
    stack = await stack_factory(leaves=(("web", "p256"),))
    session = stack.agent.sessions["web"]

    stack.emulator.inject(Fault(status=403, message="Disabled trust anchor", times=1))
    assert await session.refresh_now() is False
    stack.emulator.inject(Fault(delay=0.3, times=1))
    assert await session.refresh_now() is True
    text, samples = await scrape(stack)

    assert value(samples, "refreshes_total", profile="web", outcome="success") == 2
    assert value(samples, "refreshes_total", profile="web", outcome="AccessDenied") == 1
    histogram = "create_session_duration_seconds_"
    assert value(samples, histogram + "count", profile="web") == 3
    # The delayed call took at least 0.3 s: above the 0.25 bucket, inside the 0.5 one.
    fast = value(samples, histogram + "bucket", profile="web", le="0.25")
    assert value(samples, histogram + "bucket", profile="web", le="0.5") == fast + 1
    assert value(samples, histogram + "bucket", profile="web", le="+Inf") == 3
    assert "Disabled trust anchor" not in text  # messages stay in logs and /health


async def test_no_secret_reaches_the_metrics(stack_factory) -> None:
    stack = await stack_factory(leaves=(("web", "p256"),))
    _, _, body = await stack.get("web")

    text, _ = await scrape(stack)

    for secret in (body["SecretAccessKey"], body["Token"], stack.token("web")):
        assert secret not in text
    assert body["AccessKeyId"] not in text


async def test_two_agents_in_one_process_count_apart(stack_factory) -> None:
    first = await stack_factory(leaves=(("web", "p256"),))
    second = await stack_factory(leaves=(("db", "p256"),))

    await first.get("web")
    await second.get("db")
    await second.get("db")
    _, one = await scrape(first)
    _, two = await scrape(second)

    assert value(one, "http_requests_total", endpoint=CREDENTIALS, status="200") == 1
    assert value(two, "http_requests_total", endpoint=CREDENTIALS, status="200") == 2
    assert value(one, "refreshes_total", profile="db", outcome="success") is None
    assert value(two, "refreshes_total", profile="db", outcome="success") == 1
