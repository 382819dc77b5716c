"""The livekit-agents worker: an `AgentServer` registered under `AGENT_NAME` for explicit
dispatch, with the request handler and load function of `agent.admission`, per-process
set-up, the session entrypoint and `on_session_end` of `agent.session`.

`python -m livekit.agents start agent/server.py` finds the module-level `server`;
`python -m agent start` does the same for you.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import AgentServer, WorkerPermissions, WorkerType
from livekit.protocol.models import ServerInfo

from agent.admission import RequestHandler, SessionLoad
from agent.handlers import load_handler
from agent.log import configure as configure_logging
from agent.log import get_logger
from agent.redis_link import RedisLink
from agent.session import entrypoint, on_session_end, setup_process
from agent.settings import AgentSettings, load_settings
from agent.worker_beat import WorkerBeat
from tasks.heartbeat import any_report_filed


def build_server(settings: AgentSettings) -> AgentServer:
    """An AgentServer for `settings`; fails at once if the session handler does not load."""
    configure_logging()
    load_handler(settings.session_handler)
    options: dict[str, Any] = {}
    if settings.num_idle_processes is not None:
        options["num_idle_processes"] = settings.num_idle_processes
    if settings.health_port is not None:
        options["port"] = settings.health_port
    secret = settings.livekit_api_secret
    load = SessionLoad(settings)
    server = AgentServer(
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=secret.get_secret_value() if secret is not None else None,
        setup_fnc=setup_process,
        load_fnc=load,
        load_threshold=settings.load_threshold,
        host=settings.health_host,
        shutdown_process_timeout=settings.shutdown_process_timeout_s,
        session_end_timeout=settings.session_end_timeout_s,
        permissions=WorkerPermissions(
            can_publish=settings.can_publish,
            can_subscribe=settings.can_subscribe,
            can_publish_data=settings.can_publish_data,
            can_update_metadata=settings.can_update_metadata,
            hidden=settings.hidden,
        ),
        **options,
    )
    agent_name = settings.effective_agent_name
    # The main process's one connection: the beat's, which it closes when the worker stops.
    link = RedisLink(settings.redis_url)

    async def reported(session_ids: list[str]) -> bool:
        return await any_report_filed(await link.get(), session_ids)

    requests = RequestHandler(server, agent_name, settings.max_sessions, reported)
    server.rtc_session(
        entrypoint,
        agent_name=agent_name,
        type=WorkerType.PUBLISHER if settings.job_type == "publisher" else WorkerType.ROOM,
        on_request=requests,
        on_session_end=on_session_end,
    )
    beat = WorkerBeat(
        server,
        requests,
        link,
        agent_name=agent_name,
        max_sessions=settings.max_sessions,
        interval_s=settings.worker_heartbeat_interval_s,
        permissions=settings.permissions,
        full=load.full,
        job_type=settings.job_type,
    )
    requests.on_accept = beat.wake
    log = get_logger(agent_name=agent_name, instance=beat.instance)

    def _started() -> None:
        if agent_name != settings.agent_name:
            log.warning(
                "LIVEKIT_AGENT_NAME_OVERRIDE replaces AGENT_NAME", configured=settings.agent_name
            )
        log.info(
            "agent worker started: it takes only jobs dispatched to this agent_name",
            handler=settings.session_handler,
            max_sessions=settings.max_sessions,
            permissions=settings.permissions,
        )
        beat.start()

    def _registered(worker_id: str, info: ServerInfo) -> None:
        beat.registered(worker_id)
        log.info(
            "registered with LiveKit: dispatches must use this agent_name",
            worker_id=worker_id,
            server_version=info.version,
        )

    server.on("worker_started", _started)
    server.on("worker_registered", _registered)
    return server


server = build_server(load_settings())
