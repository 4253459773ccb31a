"""Permission checks on the files that hold an identity's secrets."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

from .identity import IdentityFiles

log = structlog.get_logger("rolesanywhere_agent.filemodes")


@dataclass(frozen=True)
class LooseFile:
    path: Path
    mode: int
    readable_by: str  # "group" or "others"


def secret_files(files: IdentityFiles) -> list[Path]:
    """The files whose content lets someone else sign as this machine."""
    candidates = (files.private_key, files.pkcs12, files.passphrase_file)
    return [path for path in candidates if path is not None]


def loose_secret_files(files: IdentityFiles) -> list[LooseFile]:
    """Secret files that users other than the owner may read."""
    loose = []
    for path in secret_files(files):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue  # a missing file is reported by the identity loader, with its name
        if mode & stat.S_IROTH:
            loose.append(LooseFile(path, mode, "others"))
        elif mode & stat.S_IRGRP:
            loose.append(LooseFile(path, mode, "group"))
    return loose


def warn_loose_secret_files(profile: str, files: IdentityFiles) -> list[LooseFile]:
    """One warning per secret file that is group- or world-readable; the agent still runs."""
    loose = loose_secret_files(files)
    for item in loose:
        log.warning(
            "secret_file_readable",
            profile=profile,
            path=str(item.path),
            mode=f"{item.mode:04o}",
            readable_by=item.readable_by,
            hint=f"chmod 600 {item.path}",
        )
    return loose
