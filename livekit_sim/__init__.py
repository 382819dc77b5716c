"""A local LiveKit-compatible server for tests, benchmarks and the demo."""

from livekit_sim.server import DEV_API_KEY, DEV_API_SECRET, LiveKitSim

__all__ = ["DEV_API_KEY", "DEV_API_SECRET", "LiveKitSim"]
