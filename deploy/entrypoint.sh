#!/bin/sh
# The container's entrypoint (Dockerfile): migrate the database, then serve.
#
#   (no arguments)  hubctl migrate, then exec hubctl serve --workers "${HUB_WORKERS:-1}"
#   any arguments   run them instead, e.g. `docker run IMAGE hubctl token --sub ops --role admin`
#
# `exec` makes hubctl (uvicorn's supervisor) the process that receives SIGTERM from the container
# runtime, so workers close their connections with 1012 and release their slots on stop.
# tests/test_ops.py runs this very script against SQLite.
set -eu

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

# Idempotent; with several replicas, a one-shot `hubctl migrate` before them (docker-compose.yml's
# `migrate` service) makes this a no-op check.
hubctl migrate

exec hubctl serve --workers "${HUB_WORKERS:-1}"
