# syntax=docker/dockerfile:1
# The hub's image: `docker build -t agent-hub:0.1.0 .` (see docker-compose.yml for a full stack).
#
# Two stages: the builder builds the project's wheel and installs it, with every runtime
# dependency, into a virtualenv (wheels only, no compiler needed); the runtime stage gets that
# venv and the two deploy scripts, nothing else: no source tree, no PYTHONPATH, no pip cache, no
# build tools, not root. The hub runs exactly as `pip install agent_hub-*.whl` installs it: the
# wheel carries the migrations, the Lua scripts and the console (tests/test_package.py).

# ---- builder ---------------------------------------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
COPY pyproject.toml README.md ./
COPY app ./app
COPY hubclient ./hubclient
COPY alembic ./alembic
# uvicorn[standard] comes with every runtime dependency (uvloop, httptools, watchfiles...).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip install --no-cache-dir /wheels/agent_hub-*.whl

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="agent-hub" \
      org.opencontainers.image.description="Authenticated WebSocket hub between agents and dashboards"

# uvloop is the event loop (uvicorn's `auto`), but the HTTP parser and WebSocket stack are h11 and
# wsproto although httptools is installed: `hubctl serve` picks them on purpose (app/serve.py,
# docs/operations.md "Server choices"): bounded header parsing and an answer to every oversized
# header. Plain `uvicorn app.main:app` would pick httptools and websockets-sansio: use hubctl.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HUB_HOST=0.0.0.0 \
    HUB_PORT=8000 \
    HUB_LOG_FORMAT=json

RUN groupadd --system --gid 10001 hub \
 && useradd --system --uid 10001 --gid hub --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin hub

COPY --from=builder /opt/venv /opt/venv
# The installed package is root-owned, read-only for the hub user; /srv/hub holds only var/ (the
# default SQLite database, writable) and the deploy scripts. Metrics of several workers go to a
# private directory under /tmp (app/serve.py).
WORKDIR /srv/hub
COPY deploy/entrypoint.sh deploy/healthcheck.py ./deploy/
RUN chmod 0755 deploy/entrypoint.sh \
 && python -m compileall -q /opt/venv/lib \
 && mkdir -p var \
 && chown hub:hub var

USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/srv/hub/deploy/healthcheck.py"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/srv/hub/deploy/entrypoint.sh"]
