"""Every cell of the README's SDK table, run with the real client in its own process.

Each child sees only the source under test and calls STS GetCallerIdentity on the emulator,
which verifies the signature made with the served credentials: a printed ARN proves the path.
"""

from __future__ import annotations

import pytest

from .compat import IMDS, MATRIX, TOKEN_ENV, Cell
from .sdk_clients import (
    AWS_CLI_CALL,
    BOTOCORE,
    JS_DIR,
    NODE,
    container_env,
    imds_env,
    js,
    run,
)

ROLE_ARN_PREFIX = "arn:aws:sts::111122223333:assumed-role/web/"
# Where a failure is expected, one attempt: the SDK's retries would only add seconds.
ONE_ATTEMPT = {"AWS_MAX_ATTEMPTS": "1"}


@pytest.fixture
async def stack(stack_factory):
    return await stack_factory(agent_extra={"imds": {"port": 0}}, real_time=True)


def argv_for(cell: Cell, request: pytest.FixtureRequest) -> list[str]:
    kind = cell.client.kind
    if kind == "botocore":
        return BOTOCORE
    if kind == "aws-cli":
        return AWS_CLI_CALL
    if kind == "go":
        return [str(request.getfixturevalue("go_caller"))]
    if NODE is None or not (JS_DIR / "node_modules" / "@aws-sdk" / "client-sts").is_dir():
        pytest.skip("JS SDK not installed: run `make test` (npm ci in tests/js) with Node 20+")
    return js(cell.client.provider)


@pytest.mark.parametrize(
    "cell", MATRIX, ids=[f"{c.client.kind}-{c.client.provider}-{c.source}" for c in MATRIX]
)
async def test_cell(stack, cell: Cell, request: pytest.FixtureRequest) -> None:
    argv = argv_for(cell, request)
    if cell.source == IMDS:
        env = imds_env(stack)
    else:
        env = container_env(stack, token="env" if cell.source == TOKEN_ENV else "file")

    outcome = await run(argv, {**env, **({} if cell.works else ONE_ATTEMPT)})

    if cell.works:
        assert outcome.ok, outcome.stderr
        assert outcome.arn.startswith(ROLE_ARN_PREFIX)
        assert stack.calls() == 1
    else:
        assert not outcome.ok
        assert outcome.why().endswith(cell.says), outcome.why()
