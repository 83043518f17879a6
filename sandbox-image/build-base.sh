#!/usr/bin/env bash
# Build the sandbox base image (Debian bookworm minbase + python3) with debootstrap
# and `docker import`, because this host has no registry to pull python:3.11-slim from.
# No-op when the image already exists.
#
# Env: BASE_IMAGE (default mcpx-base:bookworm), MIRROR (default: this host's apt
#      mirror), SUITE (default bookworm), DOCKER (client, default docker).
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

BASE_IMAGE=${BASE_IMAGE:-mcpx-base:bookworm}
SUITE=${SUITE:-bookworm}
DOCKER=${DOCKER:-docker}

log() { printf 'build-base: %s\n' "$*" >&2; }

if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE already present"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { log "ERROR: debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || { log "ERROR: debootstrap missing (run host-setup.sh)"; exit 1; }

# Use the Debian mirror apt already uses here (it is known to be reachable);
# both deb822 (*.sources) and one-line (*.list) formats, security repo excluded.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        case $f in
            *.sources) awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f" ;;
            *) sed -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2 }' ;;
        esac
    done | grep -E '/debian/?$' | head -n 1
}
MIRROR=${MIRROR:-$(apt_mirror || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOTFS=$(mktemp -d /var/tmp/mcpx-base.XXXXXX)
cleanup() {
    # debootstrap mounts /proc etc. inside the target; unmount (deepest first)
    # before deleting so rm never walks into the host's /proc or /sys.
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so cleanup runs on Ctrl-C/kill too

# python3 (not python3-minimal): the runtime needs json, asyncio, etc. from libpython3.11-stdlib.
log "debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include=python3 "$SUITE" "$ROOTFS" "$MIRROR" >&2

# Slim down: nothing in the sandbox reads docs, man pages, translations or apt
# indexes. Keep copyright files (licence compliance) and the built-in C locale.
log "slimming"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
       "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* \
       "$ROOTFS"/usr/share/lintian "$ROOTFS"/usr/share/linda
find "$ROOTFS"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find "$ROOTFS"/usr/share/doc -mindepth 1 -type d -empty -delete
if [ -d "$ROOTFS"/usr/lib/locale ]; then
    find "$ROOTFS"/usr/lib/locale -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} +
fi
# Keep the stdlib's __pycache__: containers run with PYTHONDONTWRITEBYTECODE on a
# read-only root, so without it every start would recompile json/asyncio/... .
# The host's resolv.conf/hostname leak in via debootstrap; Docker manages them per container.
: >"$ROOTFS"/etc/resolv.conf
rm -f "$ROOTFS"/etc/hostname

# An imported image has no config: give it the usual PATH (python3 found through
# it, whatever the base) and a UTF-8 locale that glibc provides without locales.
log "importing as $BASE_IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=python3 $SUITE $MIRROR" \
    - "$BASE_IMAGE" >/dev/null
log "done: $BASE_IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
