"""The HTTP service: API, LiveKit webhooks, metrics, health and dashboard."""

from orchestrator.http.app import create_app, serve

__all__ = ["create_app", "serve"]
