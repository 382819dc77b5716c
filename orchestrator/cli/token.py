"""`orchestrator token`: a join token for a person to enter a room, as the HTTP API's
`participant` gives one. It needs LiveKit's key and secret, and no Redis."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from orchestrator.cli.exits import EXIT_OK, UsageError
from orchestrator.cli.output import Output
from orchestrator.gateway.join import Participant, ParticipantGrants, join_token
from orchestrator.settings import load_settings
from tasks.models import check_room
from tasks.validation import problems

# Participant's fields as the command line names them.
_OPTIONS = {"identity": "--identity", "name": "--name", "attributes": "--attribute",
            "metadata": "--metadata", "ttl_s": "--ttl-s"}  # fmt: skip


def _option(loc: tuple[int | str, ...]) -> str:
    return _OPTIONS.get(str(loc[0]), str(loc[0])) if loc else "(token)"


def participant_of(args: argparse.Namespace) -> Participant:
    attributes: dict[str, str] = {}
    for pair in args.attribute or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--attribute {pair!r}: use NAME=VALUE")
        attributes[name] = value
    try:
        return Participant(
            identity=args.identity,
            name=args.name,
            attributes=attributes,
            metadata=args.metadata,
            ttl_s=args.ttl_s,
            grants=ParticipantGrants(
                can_publish=not args.no_publish, can_publish_data=not args.no_publish
            ),
        )
    except ValidationError as exc:
        raise UsageError(problems(exc, where=_option)) from None


def run_token(args: argparse.Namespace, out: Output) -> int:
    try:
        room = check_room(args.room)
    except ValueError as exc:
        raise UsageError(f"--room: {exc}") from None
    join = join_token(load_settings(), room, participant_of(args))
    if out.json_mode:
        out.json(join.model_dump(mode="json"))
    else:
        out.line(f"url:     {join.url}")
        out.line(f"room:    {join.room}")
        out.line(f"expires: {join.expires_at.isoformat()}")
        out.line(f"token:   {join.token}")
    return EXIT_OK
