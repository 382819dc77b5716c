"""A real livekit-agents worker for the sim's tests, run as its own process.

Environment: LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET (the sim), SIM_TEST_OUT_DIR (where
it writes what it saw), SIM_TEST_AGENT_NAME, SIM_TEST_LABEL (names this worker's files) and
SIM_TEST_ON_REQUEST: "accept" (default), or "refuse" (available=false, the server tries the next
worker). A job whose metadata is {"mode": "reject"} is rejected with terminate=true.

Files written in SIM_TEST_OUT_DIR (each written to a temporary name, then renamed):
- worker-<label>.json: worker id and server info, on registration;
- request-<label>-<job id>.json: the job request as the request handler saw it;
- job-<job id>.json: what the job process saw (metadata, ids, token claims);
- shutdown-<job id>.json: the reason the shutdown callback got.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from livekit.agents import AgentServer, JobContext, JobRequest

OUT_DIR = Path(os.environ.get("SIM_TEST_OUT_DIR", "."))
LABEL = os.environ.get("SIM_TEST_LABEL", "worker")
ON_REQUEST = os.environ.get("SIM_TEST_ON_REQUEST", "accept")


def write_json(name: str, data: dict[str, Any]) -> None:
    tmp = OUT_DIR / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(OUT_DIR / name)


def no_load(*_: object) -> float:
    # The default load is the host's CPU use; on a busy test machine it would mark us full.
    return 0.0


server = AgentServer(num_idle_processes=1, port=0, load_fnc=no_load, shutdown_process_timeout=5)


async def on_request(req: JobRequest) -> None:
    write_json(f"request-{LABEL}-{req.id}.json", {"job_id": req.id, "metadata": req.job.metadata})
    if ON_REQUEST == "refuse":
        await req.reject(terminate=False)
        return
    try:
        mode = json.loads(req.job.metadata).get("mode")
    except (ValueError, AttributeError):
        mode = None
    if mode == "reject":
        await req.reject()
        return
    await req.accept(attributes={"test.label": LABEL})


async def on_shutdown_of(ctx: JobContext, reason: str) -> None:
    write_json(f"shutdown-{ctx.job.id}.json", {"reason": reason})


@server.rtc_session(agent_name=os.environ.get("SIM_TEST_AGENT_NAME", ""), on_request=on_request)
async def entrypoint(ctx: JobContext) -> None:
    claims = ctx.token_claims()
    video = claims.video
    write_json(
        f"job-{ctx.job.id}.json",
        {
            "job_id": ctx.job.id,
            "dispatch_id": ctx.job.dispatch_id,
            "agent_name": ctx.job.agent_name,
            "room": ctx.job.room.name,
            "metadata": ctx.job.metadata,
            "worker_id": ctx.worker_id,
            "identity": claims.identity,
            "kind": claims.kind,
            "attributes": claims.attributes,
            "video_room": video.room if video else None,
            "video_agent": video.agent if video else None,
            "label": LABEL,
        },
    )

    async def on_shutdown(reason: str) -> None:
        await on_shutdown_of(ctx, reason)

    ctx.add_shutdown_callback(on_shutdown)
    # Returning without connecting keeps the job running until the server terminates it, and
    # lets the shutdown run at once (a still-running entrypoint would get a 15 s grace first).


async def main() -> None:
    def registered(worker_id: str, server_info: Any) -> None:
        info = {"version": server_info.version, "agent_protocol": server_info.agent_protocol}
        write_json(f"worker-{LABEL}.json", {"worker_id": worker_id, "server_info": info})

    server.on("worker_registered", registered)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    run = asyncio.create_task(server.run(devmode=False))
    await asyncio.wait([run, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    await server.aclose()


if __name__ == "__main__":
    asyncio.run(main())
