#!/bin/sh
# The controller is ready only once its engine holds the sandbox image, and the engine pulls through the pod's
# network, so the image is pulled here, after the engine started and before the controller does. A failure ends
# this init container; the kubelet retries it with back-off.
set -eu
: "${MCPX_IMAGE:?MCPX_IMAGE is not set}"
if docker image inspect "$MCPX_IMAGE" >/dev/null 2>&1; then
    echo "pull-sandbox-image: $MCPX_IMAGE is present"
    exit 0
fi
docker pull --quiet "$MCPX_IMAGE"
