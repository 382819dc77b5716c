"""`orchestrator dead-letters`: list the dead letters, or replay a failed dispatch."""

from __future__ import annotations

import argparse

from arq import ArqRedis

from orchestrator.cli.exits import EXIT_FAILED, EXIT_OK, UsageError
from orchestrator.cli.output import Output, clock
from orchestrator.store import dead_letters


async def cmd_dead_letters(args: argparse.Namespace, out: Output, redis: ArqRedis) -> int:
    if args.action == "replay":
        if not dead_letters.is_entry_id(args.entry_id):
            raise UsageError(
                f"dead-letters replay {args.entry_id!r}: not an entry id (like 1765000000000-0; "
                "`orchestrator dead-letters` lists them)"
            )
        try:
            job_id = await dead_letters.replay(redis, args.entry_id)
        except dead_letters.ReplayError as exc:
            out.error(str(exc))
            return EXIT_FAILED
        if out.json_mode:
            out.json({"entry_id": args.entry_id, "job_id": job_id})
        else:
            out.line(f"replayed {args.entry_id} as {job_id}")
        return EXIT_OK
    letters = await dead_letters.recent(redis, count=args.count)
    if out.json_mode:
        # The payload may carry personal data: it stays in Redis unless asked for.
        out.json(
            [
                {
                    "entry_id": d.entry_id,
                    "kind": d.kind,
                    "reason": d.reason,
                    "job_id": d.job_id,
                    "event_id": d.event_id,
                    "session_id": d.session_id,
                    "at_ms": d.at_ms,
                    "replayable": d.replayable,
                    "replayed_as": d.replayed_as,
                    **({"payload": d.payload} if args.payload else {}),
                }
                for d in letters
            ]
        )
        return EXIT_OK
    if not letters:
        out.line("no dead letters")
        return EXIT_OK
    for d in letters:
        state = (
            "replayable"
            if d.replayable
            else (f"replayed as {d.replayed_as}" if d.replayed_as else "")
        )
        out.line(
            f"{out.paint(d.entry_id, 'bold')}  {clock(d.at_ms)}  {out.paint(d.kind, 'yellow')}"
            f"  {d.event_id or d.job_id}  {out.paint(state, 'green')}"
        )
        out.line(f"    {d.reason}")
        if args.payload:
            out.line(f"    payload: {d.payload}")
    return EXIT_OK
