#!/usr/bin/env bash
# make images: build the runtime images with podman, each tagged by the hash of its inputs and
# rebuilt only when those change.
#
#   scripts/images.sh [NAME ...]      build (default: $MLOPS_IMAGES, else all six)
#   scripts/images.sh --tag NAME      print the image NAME's current tag (nothing is built)
#   scripts/images.sh --env           print `export CONTAINERS_CONF=...` for podman by hand
#   scripts/images.sh --api           start podman's Docker-compatible API on a socket (unless it
#                                     answers already) and print `export DOCKER_HOST=unix://...`:
#                                     what mode="docker" operators talk to (docs/runtimes.md)
#
# Images: localhost/airflow-mlops-<NAME>:<hash> (and :latest, the name the Kubernetes manifests
# use) from docker/<NAME>/Dockerfile, the same requirements files the local runtimes use.
#
# No container registry is reachable here, so the base image the Dockerfiles start FROM
# (python:3.11-slim) is made on this machine: `debootstrap --variant=minbase` of Debian bookworm
# (python3 3.11, python3-venv, ca-certificates) from the machine's configured Debian mirror, with
# the machine's own extra CA certificates (/usr/local/share/ca-certificates: what
# update-ca-certificates installs; never committed) so that builds reach PyPI, imported with
# `podman import` and tagged python:3.11-slim / python:3.11-slim-bookworm. Elsewhere, with
# Docker Hub reachable, `docker build -f docker/<NAME>/Dockerfile .` uses the real one.
#
# podman settings found by trying on these machines (containers.conf, written to
# .runtimes/containers/): the shell's hard nofile limit as the default ulimit (podman otherwise
# asks for more than the sandbox allows), runc (crun fails on mixed cgroups), cgroupfs, file
# events. Builds mount uv, its cache and $PIP_FIND_LINKS' folders (docker/install_requirements.sh),
# so packages the local runtimes already downloaded are not fetched again, and the horovod wheel
# cache of scripts/runtime_env.sh (the training image reuses a CPU wheel built for its Python/torch).
#
# Needs root (podman, debootstrap); installs Debian's podman, buildah, debootstrap and runc with
# apt-get when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${MLOPS_RUNTIMES_DIR:-$ROOT/.runtimes}/containers
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates
CA_DIR=/usr/local/share/ca-certificates
UV=$(command -v uv || echo "$ROOT/.tools/bin/uv")

log() { echo "[images] $*" >&2; }

containers_conf() {
    mkdir -p "$STATE"
    local nofile
    nofile=$(ulimit -Hn)
    cat > "$STATE/containers.conf.new" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    mv "$STATE/containers.conf.new" "$STATE/containers.conf"
    export CONTAINERS_CONF=$STATE/containers.conf
}

ensure_tools() {
    local missing=()
    for tool in podman debootstrap runc; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "[images] missing ${missing[*]}: install Debian's podman, buildah, debootstrap and runc" \
            "(as root: apt-get install podman buildah debootstrap runc)" >&2
        exit 1
    fi
    log "installing podman buildah debootstrap runc (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah debootstrap runc >/dev/null \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah debootstrap runc >/dev/null; }
}

debian_mirror() {
    # the first Debian archive URI of the apt sources (deb822 or one-line format)
    local uri
    uri=$(grep -hoE '^URIs:[[:space:]]*[^[:space:]]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hoE '^deb[[:space:]]+[^[:space:]]+' /etc/apt/sources.list 2>/dev/null \
            | awk '{print $2}' | grep -v security | head -n1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

sha() { sha256sum | cut -c1-12; }

base_tag() {
    { echo "$SUITE minbase $INCLUDE $(debian_mirror)"; cat "$CA_DIR"/*.crt 2>/dev/null || true; } | sha
}

has_image() { podman image exists "$1"; }

ensure_base() {
    local tag
    tag=localhost/airflow-mlops-base:$(base_tag)
    if ! has_image "$tag"; then
        ROOTFS=$(mktemp -d /tmp/mlops-base.XXXXXX)
        trap 'rm -rf "$ROOTFS"' EXIT
        local rootfs=$ROOTFS
        log "debootstrap $SUITE from $(debian_mirror) (about a minute)"
        debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$(debian_mirror)" \
            > "$STATE/debootstrap.log" 2>&1 || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
        if compgen -G "$CA_DIR/*.crt" >/dev/null; then
            cp "$CA_DIR"/*.crt "$rootfs$CA_DIR/"
        fi
        chroot "$rootfs" update-ca-certificates >/dev/null
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | podman import \
            --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
            --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
            --change 'CMD ["/bin/bash"]' - "$tag" > "$STATE/import.log" 2>&1 \
            || { cat "$STATE/import.log" >&2; exit 1; }
        rm -rf "$rootfs"
        log "base image $tag"
    fi
    podman tag "$tag" localhost/python:3.11-slim localhost/python:3.11-slim-bookworm
    BASE_ID=$(podman image inspect --format '{{.Id}}' "$tag")
}

inputs_of() {
    # what an image is built from: its Dockerfile and every path its COPY lines name
    local name=$1 dockerfile=docker/$name/Dockerfile
    local sources
    sources=$(awk '/^COPY/ { for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' "$ROOT/$dockerfile")
    # shellcheck disable=SC2086
    (cd "$ROOT" && find "$dockerfile" $sources -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        | LC_ALL=C sort | xargs sha256sum)
}

image_tag() {
    local name=$1
    echo "localhost/airflow-mlops-$name:$({ echo "$BASE_ID"; inputs_of "$name"; } | sha)"
}

build() {
    local name=$1 tag
    tag=$(image_tag "$name")
    if has_image "$tag"; then
        log "$tag is up to date"
    else
        local args=(-f "docker/$name/Dockerfile" -t "$tag")
        local links=""
        for dir in ${PIP_FIND_LINKS:-}; do
            [[ -d $dir ]] && args+=(-v "$dir:$dir:ro") && links="$links $dir"
        done
        args+=(--build-arg "PIP_FIND_LINKS=${links# }")
        if [[ -x $UV ]]; then
            local cache
            cache=$("$UV" cache dir)
            mkdir -p "$cache"
            args+=(-v "$UV:/opt/build/uv:ro" -v "$cache:/opt/build/uv-cache")
        fi
        local wheels=${MLOPS_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-provider-mlops/wheels}
        [[ -d $wheels ]] && args+=(-v "$wheels:/opt/build/horovod-wheels:ro")
        log "building $tag"
        local started=$SECONDS
        (cd "$ROOT" && podman build "${args[@]}" . > "$STATE/build-$name.log" 2>&1) \
            || { tail -30 "$STATE/build-$name.log" >&2; echo "[images] $name failed: $STATE/build-$name.log" >&2; exit 1; }
        log "built $tag in $((SECONDS - started)) s"
    fi
    podman tag "$tag" "localhost/airflow-mlops-$name:latest"
}

api_answers() { curl -sf --max-time 2 --unix-socket "$1" http://podman/_ping >/dev/null 2>&1; }

start_api() {
    local sock=$STATE/podman.sock
    if ! api_answers "$sock"; then
        rm -f "$sock"
        # --time=0: no idle exit; setsid: it outlives the shell that started it
        setsid podman system service --time=0 "unix://$sock" >> "$STATE/api.log" 2>&1 < /dev/null &
        local waited=0
        until api_answers "$sock"; do
            ((waited++ < 100)) || { log "podman's API did not answer on $sock: see $STATE/api.log"; exit 1; }
            sleep 0.1
        done
        log "podman API listening on $sock"
    fi
    echo "export DOCKER_HOST=unix://$sock"
}

main() {
    local names=()
    case "${1:-}" in
        --api)
            ensure_tools
            containers_conf
            start_api
            return ;;
        --env)
            containers_conf
            echo "export CONTAINERS_CONF=$CONTAINERS_CONF"
            return ;;
        --tag)
            containers_conf
            BASE_ID=$(podman image inspect --format '{{.Id}}' "localhost/airflow-mlops-base:$(base_tag)")
            image_tag "$2"
            return ;;
        "") read -r -a names <<< "${MLOPS_IMAGES:-serving drift training airflow postgres redis}" ;;
        *) names=("$@") ;;
    esac
    ensure_tools
    containers_conf
    ensure_base
    for name in "${names[@]}"; do
        [[ -f $ROOT/docker/$name/Dockerfile ]] || { echo "[images] no docker/$name/Dockerfile" >&2; exit 2; }
        build "$name"
    done
}

main "$@"
