"""`python -m rolesanywhere_agent.emulator --config FILE [--host H] [--port N] [--controls]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from ..errors import ConfigError
from .service import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rolesanywhere-agent emulator")
    parser.add_argument("--config", required=True, help="emulator YAML file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--controls", action="store_true", help="enable /_emulator/ (loopback)")
    args = parser.parse_args(argv)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.config, args.host, args.port, args.controls))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
