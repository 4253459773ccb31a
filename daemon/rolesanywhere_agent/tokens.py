"""Per-profile authorization tokens, kept in files that SDKs re-read on every fetch."""

from __future__ import annotations

import grp
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

import structlog

from .config import TokenFileConfig
from .errors import ConfigError

log = structlog.get_logger("rolesanywhere_agent.tokens")

# What an operator may put in a token file: printable ASCII without spaces, long enough.
_USABLE = re.compile(r"^[\x21-\x7e]{16,4096}$")


class TokenFile:
    """A profile's token: made once, reused across restarts, re-read when the file changes."""

    def __init__(self, profile: str, config: TokenFileConfig) -> None:
        self.profile = profile
        self.path = config.path
        self._config = config
        self._token = b""
        self._stamp: tuple[int, int, int] | None = None

    def check(self) -> None:
        """Raise ConfigError for what `ensure` would refuse, without touching any file."""
        self._check_folder(create=False)
        if self._config.group:
            group_id(self._config.group, self.path)

    def ensure(self) -> None:
        """Reuse a valid token file or write a new one; raise ConfigError if we cannot."""
        self.check()
        self._check_folder(create=True)
        existing = self._read()
        if existing is None:
            self._write(secrets.token_urlsafe(32))
            log.info("token_file_created", profile=self.profile, path=str(self.path))
            existing = self._read()
        if existing is None:
            raise ConfigError(f"{self.path}: token file could not be written back")
        self._enforce_mode()
        self._token = existing.encode()
        self._stamp = self._stamp_of()

    def matches(self, presented: str | None) -> bool:
        """Constant-time comparison of a raw `Authorization` value with the current token."""
        if presented is None:
            return False
        self._follow_file()
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self._token)

    def _follow_file(self) -> None:
        # An operator who rewrites the file means the new token; a vanished file is written
        # back and an unusable one ignored, so running clients are not cut off.
        stamp = self._stamp_of()
        if stamp == self._stamp:
            return
        if stamp is None:
            self._restore()
            return
        self._stamp = stamp
        if self._writable_by_others():
            log.warning("token_file_unsafe", profile=self.profile, path=str(self.path),
                        hint="other users can write this file; its new token is ignored")
            return
        token = self._read()
        if token is None:
            log.warning("token_file_unusable", profile=self.profile, path=str(self.path),
                        hint="16+ printable characters without spaces; the old token stays")
        elif token.encode() != self._token:
            try:
                self._enforce_mode()
            except ConfigError as exc:  # serving goes on; the operator hears why
                log.warning("token_file_mode_not_set", profile=self.profile, error=str(exc))
            self._token = token.encode()
            log.info("token_file_reloaded", profile=self.profile, path=str(self.path))

    def _restore(self) -> None:
        try:
            self._write(self._token.decode())
        except ConfigError as exc:
            log.warning("token_file_missing", profile=self.profile, error=str(exc))
            return
        self._stamp = self._stamp_of()
        log.warning("token_file_restored", profile=self.profile, path=str(self.path))

    def _writable_by_others(self) -> bool:
        try:
            return bool(self.path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH))
        except OSError:
            return False

    def _enforce_mode(self) -> None:
        """Give a reused or rewritten file the configured mode and group (0600 by default)."""
        try:
            info = self.path.stat()
            if self._config.group:
                gid = group_id(self._config.group, self.path)
                if info.st_gid != gid:
                    os.chown(self.path, -1, gid)
            if stat.S_IMODE(info.st_mode) != self._config.mode:
                os.chmod(self.path, self._config.mode)
                log.warning(
                    "token_file_mode_corrected",
                    profile=self.profile,
                    path=str(self.path),
                    was=oct(stat.S_IMODE(info.st_mode)),
                    now=oct(self._config.mode),
                )
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot set the token file's mode ({exc.strerror})"
            ) from None

    def _read(self) -> str | None:
        try:
            raw = self.path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return None
        token = raw.strip()
        if not _USABLE.match(token):
            return None
        if token != raw:
            log.warning(
                "token_file_whitespace",
                profile=self.profile,
                path=str(self.path),
                hint="SDKs refuse a token with trailing whitespace; rewrite the file without it",
            )
        return token

    def _write(self, token: str) -> None:
        mode = self._config.mode
        # Resolved first: a missing group must not leave a token behind in a temporary file.
        gid = group_id(self._config.group, self.path) if self._config.group else -1
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(token)  # no newline: SDKs reject CR/LF in a header (case C17)
            if gid != -1:
                os.chown(temporary, -1, gid)
            os.chmod(temporary, mode)
            os.replace(temporary, self.path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise ConfigError(f"{self.path}: cannot write token file ({exc.strerror})") from None

    def _check_folder(self, create: bool) -> None:
        folder = self.path.parent
        try:
            if create:
                folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            info = folder.stat()
        except FileNotFoundError:
            return  # `ensure` creates it
        except OSError as exc:
            raise ConfigError(f"{folder}: cannot create token folder ({exc.strerror})") from None
        if info.st_mode & stat.S_IWOTH:
            raise ConfigError(
                f"{folder}: token folder is world-writable; use a folder only the agent can "
                "write (chmod o-w)"
            )

    def _stamp_of(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino


def group_id(name: str, path: Path) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"{path}: token_file.group {name!r} does not exist") from None
