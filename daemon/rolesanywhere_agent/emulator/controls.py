"""HTTP test controls under `/_emulator/`, registered only when the emulator is asked to.

POST /_emulator/faults (a Fault as JSON), DELETE /_emulator/faults, GET /_emulator/counters,
POST /_emulator/clock {"shift_seconds": n}.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..credentials import format_expiration
from .faults import fault_from_json

if TYPE_CHECKING:
    from .service import Emulator

PREFIX = "/_emulator"


def add_routes(app: web.Application, emulator: Emulator) -> None:
    async def inject(request: web.Request) -> web.Response:
        try:
            fault = fault_from_json(await _json(request))
            emulator.inject(fault)
        except ValueError as exc:
            return _answer(400, {"message": f"bad fault: {exc}"})
        return _answer(201, {"faults": emulator.pending_faults})

    async def clear(request: web.Request) -> web.Response:
        emulator.clear_faults()
        return _answer(200, {"faults": 0})

    async def counters(request: web.Request) -> web.Response:
        return _answer(200, {"create_session": emulator.counters, "sts": emulator.sts_counters})

    async def clock(request: web.Request) -> web.Response:
        try:
            document = await _json(request)
            seconds = document["shift_seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ValueError("shift_seconds must be a number")
        except (ValueError, KeyError, TypeError) as exc:
            return _answer(400, {"message": f"bad clock shift: {exc}"})
        emulator.shift_clock(seconds)
        return _answer(200, {"now": format_expiration(emulator.now())})

    app.router.add_post(f"{PREFIX}/faults", inject)
    app.router.add_delete(f"{PREFIX}/faults", clear)
    app.router.add_get(f"{PREFIX}/counters", counters)
    app.router.add_post(f"{PREFIX}/clock", clock)


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise ValueError("body is not JSON") from None


def _answer(status: int, document: Any) -> web.Response:
    return web.json_response(document, status=status)
