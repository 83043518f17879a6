#!/usr/bin/env bash
# Build the mcpx sandbox image from sandbox-image/ (host must already be set up:
# see host-setup.sh).
#
# Usage: build.sh [--if-missing]
#   --if-missing  do nothing when $IMAGE exists and was built from the current
#                 contents of sandbox-image/ and the same BASE (label mcpx.image.hash).
# Env: IMAGE (default mcpx-sandbox:latest); BASE (default: build mcpx-base:bookworm
#      locally with build-base.sh; set e.g. BASE=python:3.11-slim with a registry);
#      TYPESCRIPT (default 1: Node.js and the TypeScript worker; 0: a Python-only image);
#      DOCKER (client, default docker); DOCKER_BUILDKIT (default 0, see below);
#      NPM (client that stages the TypeScript worker's dependency, default npm).
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE=${IMAGE:-mcpx-sandbox:latest}
DOCKER=${DOCKER:-docker}
NPM=${NPM:-npm}
TYPESCRIPT=${TYPESCRIPT:-1}
LOCAL_BASE=mcpx-base:bookworm
HASH_LABEL=mcpx.image.hash

log() { printf 'build: %s\n' "$*" >&2; }

if_missing=0
for arg in "$@"; do
    case $arg in
        --if-missing) if_missing=1 ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) log "unknown argument: $arg"; exit 2 ;;
    esac
done

base=${BASE:-$LOCAL_BASE}

# Content hash of the build inputs: every file under sandbox-image/ (paths and
# bytes, in a stable order, bytecode excluded) plus the base image name and TYPESCRIPT.
content_hash() {
    (
        cd "$HERE"
        find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*/node_modules/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
        printf 'BASE=%s\nTYPESCRIPT=%s\n' "$base" "$TYPESCRIPT"
    ) | sha256sum | cut -c1-64
}
hash=$(content_hash)

if [ "$if_missing" -eq 1 ]; then
    have=$("$DOCKER" image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$IMAGE" 2>/dev/null || true)
    if [ "$have" = "$hash" ]; then
        log "$IMAGE is up to date ($HASH_LABEL=${hash:0:12})"
        exit 0
    fi
    log "${have:+$IMAGE is stale; }building $IMAGE"
fi

if [ -z "${BASE:-}" ]; then
    BASE_IMAGE=$LOCAL_BASE DOCKER=$DOCKER "$HERE/build-base.sh"
fi

# Legacy builder by default: it only needs the daemon, whereas newer clients
# route BuildKit builds through the buildx plugin, which may be absent.
# Set DOCKER_BUILDKIT=1 to use BuildKit where it is available.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
# The build context is staged: mcpx_node/ with its npm dependency when TYPESCRIPT=1, empty otherwise, so a
# Python-only image carries no byte of the TypeScript runtime.
context=$(mktemp -d /var/tmp/mcpx-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
cp -r "$HERE/Dockerfile" "$HERE/mcpx_runtime" "$context/"
mkdir "$context/mcpx_node"
if [ "$TYPESCRIPT" = 1 ]; then
    if ! command -v "$NPM" >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        log "installing npm (to stage the TypeScript transpiler)"
        apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >&2
    fi
    command -v "$NPM" >/dev/null || { log "ERROR: TYPESCRIPT=1 needs npm on this host (or build with TYPESCRIPT=0)"; exit 1; }
    cp "$HERE"/mcpx_node/*.js "$HERE"/mcpx_node/package*.json "$context/mcpx_node/"
    "$NPM" ci --prefix "$context/mcpx_node" --omit=dev --no-fund --no-audit --silent
    rm -f "$context/mcpx_node/package-lock.json" "$context/mcpx_node/node_modules/.package-lock.json"
fi
find "$context" -name __pycache__ -prune -exec rm -rf {} +

old_id=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "docker build (BASE=$base, TYPESCRIPT=$TYPESCRIPT) -> $IMAGE"
"$DOCKER" build \
    --build-arg "BASE=$base" \
    --build-arg "TYPESCRIPT=$TYPESCRIPT" \
    --label "$HASH_LABEL=$hash" \
    -t "$IMAGE" \
    "$context"
# Drop the image this build replaced, so rebuilds do not pile up <none> images;
# Docker refuses (harmlessly) while a container or another tag still uses it.
new_id=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    "$DOCKER" rmi "$old_id" >/dev/null 2>&1 || true
fi

size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE: $(numfmt --to=iec --suffix=B "$size") ($size bytes)"
