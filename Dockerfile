# drflow worker image: `docker build -t drflow:0.1.0 .` (docker-compose.yml builds it as drflow-worker).
# Connection settings come from the environment at run time: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
# TEMPORAL_API_KEY or TEMPORAL_TLS_CERT / TEMPORAL_TLS_KEY (docs/deploy.md). Nothing secret is baked in.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Unprivileged runtime user with fixed ids (for volume permissions and runAsNonRoot policies).
RUN groupadd --system --gid 10001 drflow \
    && useradd --system --uid 10001 --gid drflow --create-home --home-dir /home/drflow \
       --shell /usr/sbin/nologin drflow

# Install the project (as root, into site-packages), then drop the sources.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY workflows/ workflows/
COPY activities/ activities/
COPY runbooks/ runbooks/
COPY workers/ workers/
RUN pip install --no-cache-dir . \
    && rm -rf /src

# The runbooks the worker serves; mount a directory over /app/runbooks to use your own.
WORKDIR /app
COPY runbooks/ /app/runbooks/
ENV DRFLOW_RUNBOOKS=/app/runbooks

USER 10001:10001

# The worker drains on SIGTERM (stops polling, lets running activities finish).
STOPSIGNAL SIGTERM
ENTRYPOINT ["drflow"]
CMD ["worker"]
