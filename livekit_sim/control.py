"""The sim's control API over HTTP, under `/_sim/` (a path livekit-server never serves).

- POST   /_sim/rooms/{room}/participants  a simulated participant joins; body
         {"identity", "name"?, "kind"?, "metadata"?, "attributes"?, "audio"?: publish a mic}
- DELETE /_sim/rooms/{room}/participants/{identity}  it (or an SDK participant) leaves
- POST   /_sim/rooms/{room}/participants/{identity}/say  it speaks; body {"wav_path"} (a WAV
         file on the sim's machine) or {"tone_hz"?, "duration_s"}; answers {"speaking_s"}
- POST   /_sim/rooms/{room}/participants/{identity}/data  body {"payload" (text) or
         "payload_base64", "topic"?, "destination_identities"?, "reliable"?}
- POST   /_sim/rooms/{room}/participants/{identity}/text  body {"text", "topic"?,
         "destination_identities"?}; both answer {"delivered_to": [identities]}
- GET    /_sim/rooms/{room}/participants/{identity}/received  data and texts it received
- GET    /_sim/rooms/{room}/texts[?topic=]  every text message sent in the room
- GET    /_sim/rooms/{room}/audio/{identity}  what an SDK participant published, as WAV
- GET    /_sim/state   rooms, dispatches, participants, workers, counters, faults injected
- GET    /_sim/calls   the Twirp call log (`?method=...` to filter)
- GET    /_sim/jobs    the job log: every job a worker accepted (`?room=...` to filter)
- POST   /_sim/faults  body {"twirp": {endpoint: TwirpFault fields},
         "workers_never_answer"?, "unoffered_rate"?, "seed"?, "clear"?} ("clear" first,
         "seed" last); answers the rules now in force and the faults injected by kind

No authentication: the control API is for tests and demos on loopback.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from livekit_sim.faults import TwirpFault, check_rate
from livekit_sim.rooms import PARTICIPANT_KINDS, ParticipantNotFoundError, RoomFullError
from livekit_sim.rtc import SimulatedParticipant, load_wav, tone
from livekit_sim.rtc.media import Samples, wav_bytes

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
        app.router.add_post("/_sim/rooms/{room}/participants/{identity}/say", self.say)
        app.router.add_post("/_sim/rooms/{room}/participants/{identity}/data", self.send_data)
        app.router.add_post("/_sim/rooms/{room}/participants/{identity}/text", self.send_text)
        app.router.add_get("/_sim/rooms/{room}/participants/{identity}/received", self.received)
        app.router.add_get("/_sim/rooms/{room}/texts", self.texts)
        app.router.add_get("/_sim/rooms/{room}/audio/{identity}", self.audio)
        app.router.add_get("/_sim/state", self.state)
        app.router.add_get("/_sim/calls", self.calls)
        app.router.add_get("/_sim/jobs", self.jobs)
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
                audio=bool(body.get("audio", False)),
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

    def _simulated(self, request: web.Request) -> SimulatedParticipant:
        try:
            return self._sim.simulated(request.match_info["room"], request.match_info["identity"])
        except KeyError as exc:
            raise web.HTTPNotFound(
                text=json.dumps({"error": str(exc).strip('"')}), content_type="application/json"
            ) from exc

    async def say(self, request: web.Request) -> web.Response:
        participant = self._simulated(request)
        body = await _json_body(request)
        samples: Samples
        if "wav_path" in body:
            try:
                samples = load_wav(str(body["wav_path"]))
            except (OSError, ValueError, EOFError) as exc:
                raise _bad_request(f"cannot read wav_path: {exc}") from exc
        elif "duration_s" in body:
            samples = tone(float(body["duration_s"]), hz=float(body.get("tone_hz", 440.0)))
        else:
            raise _bad_request('give "wav_path", or "duration_s" (and "tone_hz") for a tone')
        return web.json_response({"speaking_s": participant.say(samples)})

    async def send_data(self, request: web.Request) -> web.Response:
        participant = self._simulated(request)
        body = await _json_body(request)
        try:
            payload = (
                base64.b64decode(str(body["payload_base64"]), validate=True)
                if "payload_base64" in body
                else str(body.get("payload", "")).encode()
            )
        except binascii.Error as exc:
            raise _bad_request("payload_base64 is not base64") from exc
        reached = participant.send_data(
            payload,
            topic=str(body.get("topic", "")),
            destination_identities=_identities(body),
            reliable=bool(body.get("reliable", True)),
        )
        return web.json_response({"delivered_to": reached})

    async def send_text(self, request: web.Request) -> web.Response:
        participant = self._simulated(request)
        body = await _json_body(request)
        reached = participant.send_text(
            str(body.get("text", "")),
            topic=str(body.get("topic", "")),
            destination_identities=_identities(body),
        )
        return web.json_response({"delivered_to": reached})

    async def received(self, request: web.Request) -> web.Response:
        participant = self._simulated(request)
        return web.json_response(
            {
                "data": [
                    {
                        "sender": d.sender,
                        "topic": d.topic,
                        "payload_base64": base64.b64encode(d.payload).decode(),
                        "reliable": d.reliable,
                    }
                    for d in participant.data
                ],
                "texts": [dataclasses.asdict(t) for t in participant.texts],
            }
        )

    async def texts(self, request: web.Request) -> web.Response:
        messages = self._sim.texts(request.match_info["room"], request.query.get("topic"))
        return web.json_response({"texts": [dataclasses.asdict(t) for t in messages]})

    async def audio(self, request: web.Request) -> web.Response:
        captures = self._sim.captured_audio(
            request.match_info["room"], request.match_info["identity"]
        )
        if not captures:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no audio captured from that participant"}),
                content_type="application/json",
            )
        joined = np.concatenate([c.samples() for c in captures])
        return web.Response(body=wav_bytes(joined), content_type="audio/wav")

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self._sim.state())

    async def calls(self, request: web.Request) -> web.Response:
        method = request.query.get("method")
        records = [
            dataclasses.asdict(c) for c in self._sim.calls if method is None or c.method == method
        ]
        return web.json_response({"calls": records})

    async def jobs(self, request: web.Request) -> web.Response:
        room = request.query.get("room")
        records = [
            dataclasses.asdict(j) for j in self._sim.job_log if room is None or j.room == room
        ]
        return web.json_response({"jobs": records})

    async def set_faults(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        rules = _twirp_rules(body)
        unoffered = _unoffered_rate(body)
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise _bad_request("seed must be an integer")
        faults = self._sim.faults
        if body.get("clear"):
            faults.clear()
        faults.twirp.update(rules)
        if "workers_never_answer" in body:
            faults.workers_never_answer = bool(body["workers_never_answer"])
        if unoffered is not None:
            faults.unoffered_rate = unoffered
        if seed is not None:
            faults.seed(seed)
        return web.json_response(
            {
                "twirp": {k: dataclasses.asdict(v) for k, v in faults.twirp.items()},
                "workers_never_answer": faults.workers_never_answer,
                "unoffered_rate": faults.unoffered_rate,
                "injected": dict(faults.injected),
            }
        )


def _unoffered_rate(body: dict[str, Any]) -> float | None:
    """The body's "unoffered_rate", None when absent (400 when not a rate)."""
    if "unoffered_rate" not in body:
        return None
    rate = body["unoffered_rate"]
    try:
        check_rate("unoffered_rate", rate)
    except ValueError as exc:
        raise _bad_request(str(exc)) from exc
    return float(rate)


def _twirp_rules(body: dict[str, Any]) -> dict[str, TwirpFault]:
    """The body's "twirp" rules, all checked before any is applied (400 on a bad one)."""
    rules = body.get("twirp", {})
    if not isinstance(rules, dict):
        raise _bad_request('"twirp" must be an object of endpoint: fault')
    names = {f.name for f in dataclasses.fields(TwirpFault)}
    checked: dict[str, TwirpFault] = {}
    for endpoint, rule in rules.items():
        if not isinstance(rule, dict) or not set(rule) <= names:
            raise _bad_request(f"fault for {endpoint!r} must be an object with keys {names}")
        try:
            checked[str(endpoint)] = TwirpFault(**rule)
        except ValueError as exc:
            raise _bad_request(f"fault for {endpoint!r}: {exc}") from exc
    return checked


def _identities(body: dict[str, Any]) -> list[str]:
    value = body.get("destination_identities", [])
    if not isinstance(value, list):
        raise _bad_request("destination_identities must be a list of identities")
    return [str(v) for v in value]


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise _bad_request("body must be JSON") from exc
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    return body
