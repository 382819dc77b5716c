"""The sim's control API over HTTP, under `/_sim/` (a path livekit-server never serves).

- POST   /_sim/rooms/{room}/participants  a participant joins; body
         {"identity", "name"?, "kind"?, "metadata"?, "attributes"?}
- DELETE /_sim/rooms/{room}/participants/{identity}  it leaves
- GET    /_sim/state   rooms, dispatches, participants, workers, counters
- GET    /_sim/calls   the Twirp call log (`?method=...` to filter)
- POST   /_sim/faults  body {"twirp": {endpoint: TwirpFault fields},
         "workers_never_answer"?, "clear"?}

No authentication: the control API is for tests and demos on loopback.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from livekit_sim.faults import TwirpFault
from livekit_sim.rooms import PARTICIPANT_KINDS, ParticipantNotFoundError, RoomFullError

if TYPE_CHECKING:
    from livekit_sim.server import LiveKitSim


def proto_dict(message: Message) -> dict[str, Any]:
    """A proto as the Twirp JSON answer shows it (proto field names, defaults emitted)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _bad_request(msg: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": msg}), content_type="application/json")


class ControlAPI:
    """HTTP handlers that drive a LiveKitSim."""

    def __init__(self, sim: LiveKitSim) -> None:
        self._sim = sim

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/_sim/rooms/{room}/participants", self.join)
        app.router.add_delete("/_sim/rooms/{room}/participants/{identity}", self.leave)
        app.router.add_get("/_sim/state", self.state)
        app.router.add_get("/_sim/calls", self.calls)
        app.router.add_post("/_sim/faults", self.set_faults)

    async def join(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        identity = body.get("identity")
        kind = body.get("kind", "standard")
        if not isinstance(identity, str) or not identity:
            raise _bad_request("identity (a non-empty string) is required")
        if kind not in PARTICIPANT_KINDS:
            raise _bad_request(f"kind must be one of {sorted(PARTICIPANT_KINDS)}")
        try:
            info = await self._sim.join_participant(
                request.match_info["room"],
                identity,
                name=str(body.get("name", "")),
                kind=kind,
                metadata=str(body.get("metadata", "")),
                attributes={str(k): str(v) for k, v in dict(body.get("attributes", {})).items()},
            )
        except RoomFullError as exc:
            raise web.HTTPConflict(
                text=json.dumps({"error": str(exc)}), content_type="application/json"
            ) from exc
        return web.json_response(proto_dict(info))

    async def leave(self, request: web.Request) -> web.Response:
        try:
            info = await self._sim.leave_participant(
                request.match_info["room"], request.match_info["identity"]
            )
        except ParticipantNotFoundError as exc:
            raise web.HTTPNotFound(
                text=json.dumps({"error": str(exc)}), content_type="application/json"
            ) from exc
        return web.json_response(proto_dict(info))

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self._sim.state())

    async def calls(self, request: web.Request) -> web.Response:
        method = request.query.get("method")
        records = [
            dataclasses.asdict(c) for c in self._sim.calls if method is None or c.method == method
        ]
        return web.json_response({"calls": records})

    async def set_faults(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        faults = self._sim.faults
        if body.get("clear"):
            faults.clear()
        names = {f.name for f in dataclasses.fields(TwirpFault)}
        for endpoint, rule in dict(body.get("twirp", {})).items():
            if not isinstance(rule, dict) or not set(rule) <= names:
                raise _bad_request(f"fault for {endpoint!r} must be an object with keys {names}")
            faults.set(str(endpoint), **rule)
        if "workers_never_answer" in body:
            faults.workers_never_answer = bool(body["workers_never_answer"])
        return web.json_response(
            {
                "twirp": {k: dataclasses.asdict(v) for k, v in faults.twirp.items()},
                "workers_never_answer": faults.workers_never_answer,
            }
        )


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise _bad_request("body must be JSON") from exc
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    return body
