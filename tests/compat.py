"""The SDK compatibility matrix: what each real client does with each credential source.

One table serves twice: `test_compat_matrix.py` runs every cell with the real client and
asserts the outcome written here, and `test_docs.py` checks that the README shows exactly
`render()` of it. A client that changes behaviour fails a test before the README can lie.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_FILE = "container, token file"
TOKEN_ENV = "container, token in env"
IMDS = "IMDSv2"
SOURCES = (TOKEN_FILE, TOKEN_ENV, IMDS)


@dataclass(frozen=True)
class Client:
    label: str  # the README row
    kind: str  # botocore | aws-cli | js | go
    provider: str = ""  # the JS provider in tests/js/caller.mjs


@dataclass(frozen=True)
class Cell:
    client: Client
    source: str
    works: bool
    # For a cell that does not work: the README's reason, and the end of what the client
    # prints when it fails, which the test expects.
    reason: str = ""
    says: str = ""


BOTOCORE = Client("botocore / boto3 1.44", "botocore")
AWS_CLI = Client("AWS CLI v1 1.46", "aws-cli")
JS_HTTP = Client("JS v3 `fromHttp` (`@aws-sdk/credential-providers` 3.1178)", "js", "http")
JS_CONTAINER = Client("JS v3 `fromContainerMetadata`", "js", "container")
JS_CHAIN = Client("JS v3 default Node.js chain (tries `fromHttp` first)", "js", "chain")
JS_IMDS = Client("JS v3 `fromInstanceMetadata`", "js", "imds")
GO = Client("Go v2, Debian's 1.17", "go")

MATRIX = (
    Cell(BOTOCORE, TOKEN_FILE, True),
    Cell(BOTOCORE, TOKEN_ENV, True),
    Cell(BOTOCORE, IMDS, True),
    Cell(AWS_CLI, TOKEN_FILE, True),
    Cell(AWS_CLI, TOKEN_ENV, True),
    Cell(AWS_CLI, IMDS, True),
    Cell(JS_HTTP, TOKEN_FILE, True),
    Cell(JS_HTTP, TOKEN_ENV, True),
    Cell(
        JS_CONTAINER, TOKEN_FILE, False,
        reason="reads only the env token, gets `401`",
        says="ProviderError: Error response received from instance metadata service",
    ),
    Cell(JS_CONTAINER, TOKEN_ENV, True),
    Cell(JS_CHAIN, TOKEN_FILE, True),
    Cell(JS_IMDS, IMDS, True),
    Cell(
        GO, TOKEN_FILE, False,
        reason="predates the token file, gets `401`",
        says="Unauthorized: missing or wrong authorization token",
    ),
    Cell(GO, TOKEN_ENV, True),
    Cell(GO, IMDS, True),
)


def render() -> str:
    """The README's table: one row per client, `yes`, `no: reason`, or blank (not tried)."""
    clients = list(dict.fromkeys(cell.client for cell in MATRIX))
    lines = [
        "| client (version tested) | " + " | ".join(SOURCES) + " |",
        "|---" * (len(SOURCES) + 1) + "|",
    ]
    for client in clients:
        cells = {cell.source: cell for cell in MATRIX if cell.client == client}
        shown = [_show(cells.get(source)) for source in SOURCES]
        lines.append(f"| {client.label} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _show(cell: Cell | None) -> str:
    if cell is None:
        return ""
    return "yes" if cell.works else f"no: {cell.reason}"
