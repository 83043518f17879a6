#!/usr/bin/env bash
# Make this host able to run mcpx sandboxes: Docker + gVisor (runsc) + debootstrap,
# runsc registered as a Docker runtime, dockerd running. Idempotent: a second run
# on a ready host only checks and exits.
#
# Env: DOCKERD_LOG (default /var/log/mcpx-dockerd.log), DOCKER_WAIT (seconds, default 60).
set -euo pipefail

# dockerd/debootstrap live in /usr/sbin, which a non-login PATH may lack.
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

DAEMON_JSON=/etc/docker/daemon.json
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/mcpx-dockerd.log}
DOCKER_WAIT=${DOCKER_WAIT:-60}
# --network=none: runsc's netstack does not start on this kind of host.
# --host-uds=open: lets the sandbox connect() to the controller's host Unix socket.
RUNSC_JSON='{"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=open"]}'

log() { printf 'host-setup: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Two clients may be installed: apt's /usr/bin/docker (20.10) and a newer one in
# /usr/local/bin. Both negotiate the API version; use the first that talks to the daemon.
DOCKER=
pick_client() {
    local c
    for c in "${DOCKER_CLI:-}" docker /usr/local/bin/docker /usr/bin/docker; do
        if [ -z "$c" ] || ! command -v "$c" >/dev/null 2>&1; then continue; fi
        if "$c" info >/dev/null 2>&1; then DOCKER=$c; return 0; fi
    done
    return 1
}

# Checks the args too, so after a SIGHUP we wait until the reload took effect.
runsc_registered() {
    "$DOCKER" info --format '{{json .Runtimes.runsc}}' 2>/dev/null | grep -q -- '--host-uds=open'
}

daemon_json_ok() {
    [ -r "$DAEMON_JSON" ] && python3 - "$DAEMON_JSON" "$RUNSC_JSON" <<'EOF'
import json, sys
try:
    cfg = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(1)
sys.exit(0 if cfg.get("runtimes", {}).get("runsc") == json.loads(sys.argv[2]) else 1)
EOF
}

# Fast path: everything already in place -> nothing to do (keeps `make test` cheap).
if command -v dockerd >/dev/null && command -v runsc >/dev/null && command -v debootstrap >/dev/null \
    && daemon_json_ok && pick_client && runsc_registered; then
    log "ready (client: $DOCKER, runtimes include runsc)"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root to install/configure Docker"

# 1. Packages. One apt-get update, only when something is missing
# (python3 too: it merges daemon.json below; a minimal Debian may lack it).
pkgs=(docker.io runsc debootstrap)
command -v python3 >/dev/null || pkgs+=(python3)
if ! command -v dockerd >/dev/null || ! command -v runsc >/dev/null \
    || ! command -v debootstrap >/dev/null || ! command -v python3 >/dev/null; then
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${pkgs[@]}"
fi

# 2. Register runsc by merging into daemon.json: other keys (storage driver,
# mirrors, ...) belong to the admin and must survive. Writes only on change.
mkdir -p "$(dirname "$DAEMON_JSON")"
changed=$(python3 - "$DAEMON_JSON" "$RUNSC_JSON" <<'EOF'
import json, os, sys, tempfile
path, want = sys.argv[1], json.loads(sys.argv[2])
cfg = {}
if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path) as f:
        cfg = json.load(f)  # invalid JSON -> fail loudly instead of clobbering
    if not isinstance(cfg, dict):
        sys.exit(f"{path}: top level is not a JSON object")
runtimes = cfg.setdefault("runtimes", {})
if runtimes.get("runsc") == want:
    print("no"); sys.exit(0)
runtimes["runsc"] = want
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(cfg, f, indent=2); f.write("\n")
os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644)
os.replace(tmp, path)  # atomic: dockerd never reads a half-written file
print("yes")
EOF
)
if [ "$changed" = yes ]; then
    log "registered runsc in $DAEMON_JSON"
    # dockerd reloads "runtimes" on SIGHUP; no restart (running containers keep going).
    if pid=$(pidof -s dockerd); then
        log "reloading dockerd ($pid)"
        kill -HUP "$pid"
    fi
fi

# 3. Start dockerd if nothing answers. No systemd here: detach it into its own
# session (setsid -f) with all fds redirected, so it outlives this shell and
# `make` does not wait on its output.
if ! pick_client; then
    if pidof dockerd >/dev/null; then
        log "dockerd is running but not answering yet; waiting"
    else
        log "starting dockerd (log: $DOCKERD_LOG)"
        setsid -f nohup dockerd </dev/null >>"$DOCKERD_LOG" 2>&1
    fi
fi

# Bounded wait for the daemon and (after a SIGHUP) for the runtime to show up.
deadline=$((SECONDS + DOCKER_WAIT))
until pick_client && runsc_registered; do
    if [ $SECONDS -ge $deadline ]; then
        tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
        die "docker daemon not ready with runsc after ${DOCKER_WAIT}s"
    fi
    sleep 1
done

for c in /usr/local/bin/docker /usr/bin/docker; do
    [ -x "$c" ] || continue
    if "$c" info >/dev/null 2>&1; then log "client $c: ok"; else log "client $c: cannot talk to the daemon"; fi
done
log "ready (client: $DOCKER, runtimes include runsc)"
