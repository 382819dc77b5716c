"""`orchestrator results`: the newest session reports, and with `--follow` every new one as
it is filed. With `--group` it reads as a member of a consumer group and acknowledges each
report once printed, as a downstream service would."""

from __future__ import annotations

import argparse
import socket
from typing import Any

from arq import ArqRedis

from orchestrator.cli.exits import EXIT_OK
from orchestrator.cli.output import Output, duration
from tasks import keys
from tasks.models import SessionReport
from tasks.results import ResultEntry, ResultsConsumer, recent_results

FOLLOW_BLOCK_MS = 5000


def entry_json(entry: ResultEntry) -> dict[str, Any]:
    return {"entry_id": entry.entry_id, **entry.report.model_dump(mode="json")}


def print_entry(out: Output, entry: ResultEntry) -> None:
    if out.json_mode:
        out.json(entry_json(entry))
        return
    r: SessionReport = entry.report
    note = r.error or r.end_reason
    when = r.ended_at.astimezone().strftime("%H:%M:%S")
    out.line(
        f"{out.paint(when, 'dim')}  {out.status(r.status):<9}  {r.session_id}  {r.room}"
        f"  {duration(r.duration_s)}  {note}".rstrip()
    )


async def cmd_results(args: argparse.Namespace, out: Output, redis: ArqRedis) -> int:
    if args.group:
        consumer = ResultsConsumer(redis, args.group, args.consumer or socket.gethostname())
        await consumer.ensure_group(start_id="$" if args.new_only else "0")
        while True:
            entries = await consumer.read(block_ms=FOLLOW_BLOCK_MS if args.follow else None)
            for entry in entries:
                print_entry(out, entry)
                await consumer.ack(entry.entry_id)
            if not entries and not args.follow:
                return EXIT_OK

    entries = list(reversed(await recent_results(redis, count=args.count)))
    for entry in entries:
        print_entry(out, entry)
    if not args.follow:
        if not entries and not out.json_mode:
            out.line("no reports yet")
        return EXIT_OK
    last_id = entries[-1].entry_id if entries else "$"
    if last_id == "$":
        # "$" would skip a report filed between our read and the first block.
        newest = await redis.xrevrange(keys.RESULTS_STREAM, count=1)
        last_id = newest[0][0].decode() if newest else "0-0"
    while True:
        reply = await redis.xread({keys.RESULTS_STREAM: last_id}, block=FOLLOW_BLOCK_MS)
        for _, rows in reply or []:
            for entry_id, fields in rows:
                last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                report = SessionReport.model_validate_json(fields[b"report"])
                print_entry(out, ResultEntry(last_id, report))
