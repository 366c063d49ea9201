#!/usr/bin/env bash
# make compose / make compose-down: the production-like stack of docker/compose.yaml.
#
#   scripts/compose.sh up       build what is missing, start the stack, wait for Airflow, print
#                               where to look (the images: scripts/images.sh, cached by input hash)
#   scripts/compose.sh down     stop the local model deployments, then stop and remove the
#                               stack's containers (its folder is kept: `rm -rf .compose` after
#                               `down` starts over, databases and secrets included)
#   scripts/compose.sh ARGS...  any other compose command: ps, logs -f airflow-worker, ...
#
# The stack's folder is $MLOPS_COMPOSE_DIR (default .compose/ in the checkout): PostgreSQL's and
# Redis' data, the data dir, task logs, MLflow artifacts, and secrets.env (the stack's passwords and keys, generated on the first
# `up`, mode 600). The compose tool is `docker compose` where Docker's compose plugin is installed
# (MLOPS_COMPOSE_TOOL=docker|podman chooses), else podman-compose (PyPI, pinned, installed into
# .tools/compose with uv: Debian bookworm's own is too old for `network_mode: host`).
# Ports (127.0.0.1): AIRFLOW_PORT 8080, MLFLOW_PORT 5000, POSTGRES_PORT 15432, REDIS_PORT 16379.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export MLOPS_COMPOSE_DIR=${MLOPS_COMPOSE_DIR:-$ROOT/.compose}
# the DAGs the stack runs (mounted at the same path): the checkout's examples by default
export MLOPS_DAGS_DIR=${MLOPS_DAGS_DIR:-$ROOT/dags}
PROJECT=${MLOPS_COMPOSE_PROJECT:-airflow-mlops}
export AIRFLOW_PORT=${AIRFLOW_PORT:-8080} MLFLOW_PORT=${MLFLOW_PORT:-5000}
export POSTGRES_PORT=${POSTGRES_PORT:-15432} REDIS_PORT=${REDIS_PORT:-16379}
# the Airflow containers run as this uid: it owns what tasks write and must reach the API socket
export AIRFLOW_UID=${AIRFLOW_UID:-$(id -u)}

log() { echo "[compose] $*" >&2; }

for dir in MLOPS_COMPOSE_DIR MLOPS_DAGS_DIR; do
    case ${!dir} in
        /*) ;;
        *) log "$dir must be an absolute path (it is mounted at the same path): ${!dir}"; exit 2 ;;
    esac
done

#: podman-compose from PyPI, pinned: Debian bookworm's 1.0.3 puts every service on a compose
#: network even with `network_mode: host` (podman refuses that), fixed in later releases
PODMAN_COMPOSE=podman-compose==1.6.0

compose_tool() {
    if [[ -z ${MLOPS_COMPOSE_TOOL:-} ]] && docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif [[ ${MLOPS_COMPOSE_TOOL:-} == docker ]]; then
        COMPOSE=(docker compose)
    else
        local venv=$ROOT/.tools/compose
        if ! "$venv/bin/podman-compose" --version 2>/dev/null | grep -q "${PODMAN_COMPOSE#*==}"; then
            local uv
            uv=$(command -v uv || echo "$ROOT/.tools/bin/uv")
            [[ -x $uv ]] || { log "uv is needed to install $PODMAN_COMPOSE: make setup installs it"; exit 1; }
            [[ -n ${PIP_FIND_LINKS:-} ]] && export UV_FIND_LINKS=${UV_FIND_LINKS:-$(echo "$PIP_FIND_LINKS" | xargs | tr ' ' ',')}
            [[ -n ${PIP_INDEX_URL:-} ]] && export UV_INDEX_URL=${UV_INDEX_URL:-$PIP_INDEX_URL}
            log "installing $PODMAN_COMPOSE into $venv"
            "$uv" venv -q --allow-existing "$venv" --python 3.11 && "$uv" pip install -q --python "$venv/bin/python" "$PODMAN_COMPOSE"
        fi
        COMPOSE=("$venv/bin/podman-compose")
    fi
    COMPOSE+=(-p "$PROJECT" -f "$ROOT/docker/compose.yaml")
}

secrets() {
    # generated once: the stack keeps its database passwords and signing keys across restarts
    local file=$MLOPS_COMPOSE_DIR/secrets.env
    if [[ ! -s $file ]]; then
        (umask 077 && python3 - > "$file.new" <<'EOF'
import base64, os, secrets
print(f"AIRFLOW_ADMIN_PASSWORD={secrets.token_urlsafe(12)}")
print(f"POSTGRES_PASSWORD={secrets.token_hex(16)}")
print(f"AIRFLOW_JWT_SECRET={secrets.token_urlsafe(32)}")
print(f"AIRFLOW_SECRET_KEY={secrets.token_urlsafe(32)}")
print(f"AIRFLOW_FERNET_KEY={base64.urlsafe_b64encode(os.urandom(32)).decode()}")
EOF
        ) && mv "$file.new" "$file"
        log "secrets written to $file"
    fi
    set -a
    # shellcheck disable=SC1090
    . "$file"
    set +a
}

environment() {
    mkdir -p "$MLOPS_COMPOSE_DIR"/{data,logs,mlflow,postgres,redis}
    secrets
    if [[ ${COMPOSE[0]} == docker ]]; then
        # Docker's own socket (or DOCKER_HOST's) is the API the tasks start containers through
        local host=${DOCKER_HOST:-unix:///var/run/docker.sock}
        export MLOPS_DOCKER_SOCKET=${host#unix://}
        return
    fi
    # podman (and podman-compose) with this machine's settings; the API socket the tasks use
    eval "$(bash "$ROOT/scripts/images.sh" --env)"
    local api
    api=$(bash "$ROOT/scripts/images.sh" --api)
    eval "$api"
    export MLOPS_DOCKER_SOCKET=${DOCKER_HOST#unix://}
}

IMAGES=(postgres redis airflow training serving drift)

build_images() {
    if [[ ${COMPOSE[0]} != docker ]]; then
        bash "$ROOT/scripts/images.sh" "${IMAGES[@]}"  # podman, cached by input hash
        return
    fi
    # Docker: its build cache does what the input hash does for podman; FROM images from Docker Hub
    local name
    for name in "${IMAGES[@]}"; do
        docker build -q -f "$ROOT/docker/$name/Dockerfile" -t "localhost/airflow-mlops-$name:latest" "$ROOT" >/dev/null
    done
}

wait_for_airflow() {
    # up: every component healthy and the admin able to log in (airflow-init has made the user)
    local url=http://127.0.0.1:$AIRFLOW_PORT waited=0
    log "waiting for Airflow at $url"
    until python3 - "$url" <<'EOF'
import json, os, sys, urllib.request
try:
    health = json.load(urllib.request.urlopen(sys.argv[1] + "/api/v2/monitor/health", timeout=5))
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    if not all(health.get(p, {}).get("status") == "healthy" for p in parts):
        sys.exit(1)
    login = {"username": "admin", "password": os.environ["AIRFLOW_ADMIN_PASSWORD"]}
    request = urllib.request.Request(
        sys.argv[1] + "/auth/token", json.dumps(login).encode(), {"Content-Type": "application/json"}
    )
    json.load(urllib.request.urlopen(request, timeout=5))["access_token"]
except Exception:
    sys.exit(1)
EOF
    do
        if ((waited++ > 300)); then
            log "Airflow is not healthy after 10 minutes: scripts/compose.sh logs airflow-scheduler"
            "${COMPOSE[@]}" ps >&2 || true
            exit 1
        fi
        sleep 2
    done
}

up() {
    build_images
    environment
    "${COMPOSE[@]}" up -d
    wait_for_airflow
    cat <<EOF

Airflow   http://127.0.0.1:$AIRFLOW_PORT   user admin, password: AIRFLOW_ADMIN_PASSWORD in $MLOPS_COMPOSE_DIR/secrets.env
          (CeleryExecutor on PostgreSQL 127.0.0.1:$POSTGRES_PORT and Redis 127.0.0.1:$REDIS_PORT)
MLflow    http://127.0.0.1:$MLFLOW_PORT
Data dir  $MLOPS_COMPOSE_DIR/data   task logs: $MLOPS_COMPOSE_DIR/logs
Unpause flights_delay_pipeline in the UI (or: scripts/compose.sh exec airflow-scheduler airflow dags unpause flights_delay_pipeline);
its tasks run on the Celery worker, training, serving and drift in their images. Stop: make compose-down
EOF
}

stop_deployments() {
    # a local deployment's router and supervisor are processes of the worker's container, its
    # model servers containers their runners stop on SIGTERM: stop them the way `make stop` does,
    # in there, before the worker goes (a killed runner would leave its model server running)
    "${COMPOSE[@]}" exec -T airflow-worker python - <<'EOF' || log "no running worker: no deployment stopped"
from airflow_mlops import settings
from airflow_mlops.serving.state import DeploymentStore

for deployment in sorted((settings.data_dir() / "deployments").glob("*/")):
    for record in DeploymentStore(deployment).stop_all():
        print(f"[compose] stopped {deployment.name} (pid {record['pid']})")
EOF
}

compose_tool
case ${1:-up} in
    up) up ;;
    # 30 s for the worker to finish what it runs (podman-compose stops with -t 1 by default)
    down) environment; stop_deployments; "${COMPOSE[@]}" down -t 30 "${@:2}" ;;
    *) environment; "${COMPOSE[@]}" "$@" ;;
esac
