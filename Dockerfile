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

# No runbook is baked in: the worker serves /etc/drflow/runbooks, empty in the image, and you mount your
# runbooks there (read-only). The repository's runbooks/sandbox.yaml (the dev sandbox) and examples/ are
# not served; they stay in site-packages only for `drflow runbook validate`.
# /var/lib/drflow is the only place the worker writes (archives, drill reports): owned by the runtime user,
# so a named volume mounted there starts out writable by it. Everything else may be read-only.
WORKDIR /app
RUN install -d -m 0755 /etc/drflow/runbooks \
    && install -d -m 0750 -o 10001 -g 10001 /var/lib/drflow
ENV DRFLOW_RUNBOOKS=/etc/drflow/runbooks \
    DRFLOW_ARCHIVE=/var/lib/drflow/archive \
    DRFLOW_DRILL_REPORTS=/var/lib/drflow/drills
VOLUME ["/var/lib/drflow"]

USER 10001:10001

# The worker drains on SIGTERM (stops polling, lets running activities finish).
STOPSIGNAL SIGTERM
ENTRYPOINT ["drflow"]
CMD ["worker"]
