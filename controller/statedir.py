"""The state dir's lock: one controller per state dir, for as long as it runs.

A controller removes whatever it finds in its state dir that it did not re-adopt (stub trees, session directories,
their sandboxes), so a second controller on the same dir would wreck the first one. The lock is an exclusive
`flock` on `controller.lock` in the state dir, held until the controller closes or its process ends (a `kill -9`
included: the kernel drops it), and the lock file says who holds it, for the error a second one gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from controller.errors import ConfigError

LOCK_NAME = "controller.lock"


class StateDirBusy(ConfigError):
    """Another controller holds the state dir; `holder` is what its lock file says about it."""

    def __init__(self, state_dir: Path, holder: dict[str, object]) -> None:
        if holder:
            who = (
                f"controller {holder.get('controller_id')!r} (pid {holder.get('pid')}, "
                f"port {holder.get('port')}, started {holder.get('started_at')})"
            )
        else:
            who = "another controller"
        super().__init__(
            f"the state dir {state_dir} is in use by {who}: stop that one, or give this one its own "
            "MCPX_STATE_DIR and MCPX_CONTROLLER_ID"
        )
        self.state_dir, self.holder = state_dir, holder


class StateLock:
    """The exclusive lock of one state dir; `acquire()` is idempotent, `release()` too."""

    def __init__(self, state_dir: Path, controller_id: str, host: str, port: int) -> None:
        self.path = state_dir / LOCK_NAME
        self.holder = {"controller_id": controller_id, "pid": os.getpid(), "host": host, "port": port}
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this controller into the lock file.

        Raises:
            StateDirBusy: another controller (any process, or another manager in this one) holds it.
        """
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:  # the holder is between truncating and writing its details
                holder = {}
            os.close(fd)
            raise StateDirBusy(self.path.parent, holder if isinstance(holder, dict) else {}) from None
        except BaseException:
            os.close(fd)
            raise
        started = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**self.holder, "started_at": started}).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        """Let the next controller have the state dir (the lock file stays: removing it would race a new holder)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
