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
# gVisor's systrap platform exists from its 2023 releases on. Inside a VM it makes each system call of sandboxed
# code about 100x cheaper than the ptrace platform (getpid: ~1 us against 100-190 us, measured on this kind of host).
# Debian 12 ships gVisor 2022-12 (ptrace only); its official backports carry 2024-07, installed from there.
SYSTRAP_SINCE=20230601
CODENAME=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
BACKPORTS_SOURCES=/etc/apt/sources.list.d/mcpx-bookworm-backports.sources

log() { printf 'host-setup: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The release date in `runsc --version` ("0.0~20240729.0", "release-20240729.0").
runsc_systrap() {
    local date
    date=$(runsc --version 2>/dev/null | grep -o '[0-9]\{8\}' | head -n 1)
    [ -n "$date" ] && [ "$date" -ge "$SYSTRAP_SINCE" ]
}

# An older runsc is replaced where a newer one is packaged (Debian 12: its backports).
runsc_wanted() {
    command -v runsc >/dev/null && { runsc_systrap || [ "$CODENAME" != bookworm ]; }
}

# --network=none: runsc's netstack does not start on this kind of host.
# --host-uds=open: lets the sandbox connect() to the controller's host Unix socket.
# --oci-seccomp: enforce the container's seccomp profile inside the sandbox (runsc ignores it otherwise). Docker's
#   default profile then breaks threads under gVisor (its clone3 rule); mcpx's own profile allows clone3 there.
runsc_json() {
    local platform=
    if runsc_systrap; then platform=', "--platform=systrap"'; fi
    printf '{"path": "%s", "runtimeArgs": ["--network=none", "--host-uds=open", "--oci-seccomp"%s]}' \
        "$(command -v runsc)" "$platform"
}

# runc before 1.1.12 leaks a host directory fd into the container (CVE-2024-21626), unless the distribution
# patched it: Debian 12's 1.1.5+ds1-1+deb12u1 (bookworm-security) and later revisions carry the fix.
RUNC_FIXED=1.1.12
runc_fixed() {
    local out version
    out=$(runc --version 2>/dev/null) || return 1
    grep -q '^commit: 1\.1\.5+ds1-1+deb12u[1-9]' <<<"$out" && return 0
    version=$(sed -n 's/^runc version \([0-9][0-9.]*\).*/\1/p' <<<"$out")
    [ -n "$version" ] && [ "$(printf '%s\n' "$RUNC_FIXED" "$version" | sort -V | head -n 1)" = "$RUNC_FIXED" ]
}

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
    local registered
    registered=$("$DOCKER" info --format '{{json .Runtimes.runsc}}' 2>/dev/null) || return 1
    grep -q -- '--host-uds=open' <<<"$registered" || return 1
    grep -q -- '--oci-seccomp' <<<"$registered" || return 1
    ! runsc_systrap || grep -q -- '--platform=systrap' <<<"$registered"
}

daemon_json_ok() {
    [ -r "$DAEMON_JSON" ] && python3 - "$DAEMON_JSON" "$(runsc_json)" <<'EOF'
import json, sys
try:
    cfg = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(1)
sys.exit(0 if cfg.get("runtimes", {}).get("runsc") == json.loads(sys.argv[2]) else 1)
EOF
}

# Fast path: everything already in place -> nothing to do (keeps `make test` cheap).
if command -v dockerd >/dev/null && runsc_wanted && command -v debootstrap >/dev/null && runc_fixed \
    && daemon_json_ok && pick_client && runsc_registered; then
    log "ready (client: $DOCKER, runtimes include runsc$(runsc_systrap && echo " on systrap"))"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root to install/configure Docker"

# 1. Packages. One apt-get update, only when something is missing
# (python3 too: it merges daemon.json below; a minimal Debian may lack it).
pkgs=(docker.io debootstrap)
command -v python3 >/dev/null || pkgs+=(python3)
export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null || ! runsc_wanted \
    || ! command -v debootstrap >/dev/null || ! command -v python3 >/dev/null; then
    if [ "$CODENAME" = bookworm ] && ! runsc_systrap; then
        log "adding Debian's bookworm-backports (for gVisor with systrap) in $BACKPORTS_SOURCES"
        printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
            "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >"$BACKPORTS_SOURCES"
    fi
    log "installing ${pkgs[*]} runsc"
    apt-get update -q
    apt-get install -y -q "${pkgs[@]}"
    if [ -f "$BACKPORTS_SOURCES" ]; then
        apt-get install -y -q -t bookworm-backports runsc
    else
        apt-get install -y -q runsc
    fi
fi
# A vulnerable runc is upgraded to the newest packaged one (security updates included). containerd's shim runs the
# runc binary anew for each container operation: new containers use the new one at once, no dockerd restart.
if ! runc_fixed; then
    log "runc lacks the fix for CVE-2024-21626 ($(runc --version 2>/dev/null | head -n 1)); upgrading"
    apt-get update -q
    apt-get install -y -q --only-upgrade runc
    runc_fixed || log "WARNING: no packaged runc has the fix for CVE-2024-21626; install runc >= $RUNC_FIXED"
fi

# 2. Register runsc by merging into daemon.json: other keys (storage driver,
# mirrors, ...) belong to the admin and must survive. Writes only on change.
mkdir -p "$(dirname "$DAEMON_JSON")"
changed=$(python3 - "$DAEMON_JSON" "$(runsc_json)" <<'EOF'
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
    log "registered runsc in $DAEMON_JSON: $(runsc_json)"
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
log "ready (client: $DOCKER, runtimes include runsc$(runsc_systrap && echo " on systrap"))"
