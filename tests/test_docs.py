"""The documentation agrees with the code: every config key is in the README reference table
and in config/agent.example.yaml, and the example file loads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rolesanywhere_agent import config

from .compat import render as render_matrix

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLE = ROOT / "config" / "agent.example.yaml"


def allowed_keys() -> set[str]:
    """Every key in config.py's allowed-key sets: the string set literals of the module."""
    tree = ast.parse(Path(config.__file__).read_text())
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Set) and all(
            isinstance(item, ast.Constant) and isinstance(item.value, str) for item in node.elts
        ):
            keys.update(item.value for item in node.elts)
    return keys


def section(title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


KEYS = sorted(allowed_keys())


def test_the_key_sets_were_found() -> None:
    assert {"listen", "profiles", "certificate", "token_file", "group", "port"} <= set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_key_is_in_the_readme_reference_table(key: str) -> None:
    table = section("Configuration reference")

    assert re.search(rf"^\| `([\w.]+\.)?{key}(\.[\w.]+)?` \|", table, re.M), key


@pytest.mark.parametrize("key", KEYS)
def test_key_is_in_the_example_file(key: str) -> None:
    assert re.search(rf"(^|[\s{{,#])+{key}:", EXAMPLE.read_text(), re.M), key


def test_example_file_loads(tmp_path: Path) -> None:
    loaded = config.load_config(EXAMPLE, environ={"RUNTIME_DIRECTORY": str(tmp_path)})

    assert list(loaded.profiles) == ["web"]
    assert loaded.listen.port == 9912
    assert loaded.profiles["web"].session.duration_seconds == 3600


def test_readme_names_every_unit_and_bench_script() -> None:
    for path in [*(ROOT / "systemd").iterdir(), ROOT / "Dockerfile"]:
        assert path.name in README, path.name
    for letter in "abcde":
        assert f"| ({letter}) " in section("Performance")


def test_readme_sdk_table_is_the_tested_matrix() -> None:
    """tests/test_compat_matrix.py runs every cell of this table with the real client."""
    assert render_matrix() in README
