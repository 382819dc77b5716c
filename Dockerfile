# One image for every part we run: the orchestrator worker, the HTTP service and the agent
# worker differ only in their command (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tasks ./tasks
COPY orchestrator ./orchestrator
COPY agent ./agent
COPY livekit_sim ./livekit_sim
RUN pip install . && useradd --create-home --uid 10001 lkd
USER lkd
