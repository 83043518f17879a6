"""Entry point: connect to the controller before anything slow, then hand the connection to the supervisor.

Under gVisor every import costs system calls, so the socket connects first; the supervisor's imports, and the
worker's, overlap with the controller's bookkeeping instead of delaying the session's creation.
"""

import os
import socket
import time

SOCKET_PATH = os.environ.get("MCPX_SOCKET", "/run/mcpx/bridge.sock")


def connect(path: str, attempts: int = 100) -> socket.socket:
    for _ in range(attempts):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            time.sleep(0.05)
    raise SystemExit(f"mcpx runtime: cannot connect to {path}")


connection = connect(SOCKET_PATH)
from mcpx_runtime import supervisor  # noqa: E402 - deliberately after the connection

supervisor.main(connection, SOCKET_PATH)
