#!/bin/sh
# Puts runsc of the pinned gVisor release in the volume the engine runs it from, verified before it is used.
# Runs as a non-root init container: it only needs to write that volume.
set -eu
url="${GVISOR_URL%/}/$(uname -m)"
cd /opt/gvisor/bin
rm -f runsc runsc.sha512
wget -q -T 60 -O runsc "$url/runsc"
wget -q -T 60 -O runsc.sha512 "$url/runsc.sha512"
actual=$(sha512sum runsc | cut -d ' ' -f 1)
published=$(cut -d ' ' -f 1 runsc.sha512)
if [ "$actual" != "$published" ]; then
    echo "install-runsc: runsc from $url does not match its published SHA-512" >&2
    exit 1
fi
if [ -n "${RUNSC_SHA512:-}" ] && [ "$actual" != "$RUNSC_SHA512" ]; then
    echo "install-runsc: runsc from $url is $actual, not the pinned RUNSC_SHA512" >&2
    exit 1
fi
[ -n "${RUNSC_SHA512:-}" ] || echo "install-runsc: RUNSC_SHA512 is empty: checked against the published checksum only" >&2
rm runsc.sha512
chmod 0555 runsc
./runsc --version
