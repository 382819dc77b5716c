"""The agent's errors: one hierarchy, each message saying what was wrong and what to do."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A setting is missing or wrong; the message names the variable."""


class HandlerLoadError(AgentError):
    """The configured session handler cannot be imported or is not callable."""


class InvalidMetadataError(AgentError):
    """`ctx.job.metadata` is not the JobMetadata the orchestrator sends."""


class ReportWriteError(AgentError):
    """The session report could not be enqueued within its time budget."""
