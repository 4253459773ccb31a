"""`rolesanywhere-agent`: the daemon and its companion commands.

Exit codes: 0 success; 1 a runtime failure (no credentials, a demo check failed);
2 bad usage, configuration or identity (the message says which file and field).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from . import __version__, check, credential_process, logs
from .activation import inherited_socket
from .app import Agent, exports_for
from .config import AgentConfig, load_config
from .errors import AgentError, ConfigError, IdentityError
from .notify import Notifier, ServiceReporter, profiles_status

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = Path("/etc/rolesanywhere-agent/agent.yaml")
CONFIG_HELP = "agent YAML (default: %(default)s)"

log = structlog.get_logger("rolesanywhere_agent.cli")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except (ConfigError, IdentityError) as exc:
        print(f"rolesanywhere-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AgentError as exc:
        print(f"rolesanywhere-agent: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read stdout went away (`| head`): nobody is left to tell, so no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolesanywhere-agent",
        description="IAM Roles Anywhere credential agent for unmodified AWS SDKs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the agent")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=CONFIG_HELP)
    serve.set_defaults(command=cmd_serve)

    env = commands.add_parser("env", help="print the exports an application needs")
    env.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=CONFIG_HELP)
    env.add_argument("--profile", required=True)
    env.add_argument("--format", choices=("sh", "fish", "json", "systemd"), default="sh")
    env.set_defaults(command=cmd_env)

    credential_process.register(commands)
    check.register(commands, DEFAULT_CONFIG)

    emulator = commands.add_parser("emulator", help="run the local Roles Anywhere + STS emulator")
    emulator.add_argument(
        "--config", type=Path, required=True, help="emulator YAML (README: The emulator)"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=9443)
    emulator.add_argument(
        "--controls", action="store_true", help="enable fault and counter controls"
    )
    emulator.set_defaults(command=cmd_emulator)

    demo = commands.add_parser("demo", help="emulator + agent + real SDK calls, all local")
    demo.add_argument("--once", action="store_true", help="exit after the checks")
    demo.set_defaults(command=cmd_demo)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    # Until the loop's handler is in place, a SIGHUP (an early `systemctl reload`) must not
    # end the process, which is the default action.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = load_config(args.config)
    logs.configure(config.log.format, config.log.level)
    sock = inherited_socket()  # systemd socket activation, when a .socket unit started us
    return run_until_signalled(lambda stop: _serve(config, stop, sock, args.config))


async def _serve(
    config: AgentConfig, stop: asyncio.Event, sock: socket.socket | None, path: Path
) -> int:
    agent = Agent(config, sock=sock)
    notifier = Notifier()
    reload_on_hangup(agent, path, stop, notifier)
    reporter = ServiceReporter(notifier, agent.sessions)
    agent.on_refresh(reporter.refresh_finished)
    reporting = asyncio.create_task(reporter.run(), name="service-reporter")
    try:
        await agent.start()
        # READY only now: every profile has its first session or a recorded failure.
        notifier.ready(profiles_status(agent.sessions))
        await stop.wait()
        notifier.stopping("stopping")
    finally:
        reporting.cancel()
        await agent.stop()
        notifier.close()
    return EXIT_OK


def reload_on_hangup(
    agent: Agent, path: Path, stop: asyncio.Event, notifier: Notifier
) -> None:
    """SIGHUP re-reads `path` and hands it to the agent, which applies it or refuses it."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        if stop.is_set():
            return  # stopping: a reload now would only slow the drain down
        task = loop.create_task(_reload(agent, path, notifier), name="reload")
        pending.add(task)  # a reference, so the task is not collected while it runs
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)


async def _reload(agent: Agent, path: Path, notifier: Notifier) -> None:
    log.info("config_reload_requested", path=str(path))
    notifier.reloading()
    try:
        config = await asyncio.to_thread(load_config, path)
        await agent.reload(config)
    except AgentError as exc:
        log.error(
            "config_reload_refused",
            error=str(exc),
            hint="the previous configuration keeps running",
        )
    except Exception as exc:  # noqa: BLE001 - a reload must never take the agent down
        # The type only, no traceback: its text and locals could quote the file's secrets.
        log.error(
            "config_reload_failed",
            path=str(path),
            error=type(exc).__name__,
            hint="the previous configuration keeps running; check the file and send SIGHUP",
        )
    # systemd waits for READY=1 after RELOADING=1, whether the new config was taken or not.
    notifier.ready(profiles_status(agent.sessions))


def cmd_env(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.profile not in config.profiles:
        known = ", ".join(sorted(config.profiles))
        raise ConfigError(f"{args.config}: profiles: no profile {args.profile!r} (have {known})")
    profile = config.profiles[args.profile]
    if not profile.token_file.path.exists():
        # Still print: a unit file or script may be written before the agent first starts.
        print(
            f"rolesanywhere-agent: warning: {profile.token_file.path} does not exist yet; "
            "the agent writes it when it starts",
            file=sys.stderr,
        )
    print(format_exports(exports_for(config, profile).as_dict(), args.format))
    return EXIT_OK


def format_exports(exports: dict[str, str], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(exports, indent=2)
    if fmt == "fish":
        return "\n".join(f"set -gx {k} {shlex.quote(v)}" for k, v in exports.items())
    if fmt == "systemd":
        return "\n".join(f"Environment={k}={v}" for k, v in exports.items())
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in exports.items())


def cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator import load_config as load_emulator_config
    from .emulator import serve

    load_emulator_config(args.config)  # a bad file fails here, with exit code 2
    logs.configure("console" if sys.stderr.isatty() else "json")

    async def body(stop: asyncio.Event) -> int:
        server = asyncio.create_task(serve(args.config, args.host, args.port, args.controls))
        await asyncio.wait({server, asyncio.create_task(stop.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        return EXIT_OK

    return run_until_signalled(body)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logs.configure("console", "warning")
    return run_until_signalled(lambda stop: run_demo(once=args.once, stop=stop))


def run_until_signalled(
    body: Callable[[asyncio.Event], Coroutine[Any, Any, int]],
) -> int:
    """Run `body` until it returns; SIGTERM/SIGINT ask it to stop, a second one forces it."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and main_task is not None:
                log.warning("shutdown_forced", hint="second signal: not waiting for the drain")
                main_task.cancel()
            elif not stop.is_set():
                log.info("shutdown_requested", hint="a second SIGTERM or SIGINT forces it")
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        try:
            return await body(stop)
        except asyncio.CancelledError:
            return EXIT_FAILURE

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(runner())
    return 130


if __name__ == "__main__":
    sys.exit(main())
