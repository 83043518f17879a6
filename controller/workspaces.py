"""Session workspaces on the host: a directory bind-mounted at /workspace, capped in size.

The cap is a sparse ext4 image loop-mounted on the directory (about 30 ms to make), so a full workspace gives the
code a clean ENOSPC and cannot fill the host's disk. Where the controller may not mount (not root), workspaces
are plain directories and the cap is not enforced; `Workspaces.capped` says which.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import anyio.to_thread

from controller.errors import WorkspaceError

logger = logging.getLogger(__name__)


def finished(command: tuple[str, ...]) -> tuple[int, bytes]:
    """Run a program to its end: its exit status and output."""
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    return done.returncode, done.stdout


async def run(*command: str) -> None:
    """Run a program to its end. Raises: WorkspaceError (it failed).

    From a worker thread, where `subprocess` uses vfork: the event loop's own way forks the whole controller (hundreds
    of MiB of page tables) and waits for the child's exec, which under a burst of session creations held every other
    request, refusals included, for seconds.
    """
    status, output = await anyio.to_thread.run_sync(finished, command)
    if status != 0:
        raise WorkspaceError(f"{command[0]} failed ({status}): {output.decode(errors='replace').strip()}")


def mounts_under(root: Path) -> list[Path]:
    """Mount points below `root`, deepest first (from /proc/self/mounts; octal escapes as the kernel writes)."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    with open("/proc/self/mounts") as table:
        for line in table:
            target = line.split()[1].encode().decode("unicode_escape")
            if target.startswith(prefix):
                found.append(Path(target))
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


class Workspaces:
    """Makes and removes workspaces; `size_mb` of 0 means uncapped plain directories."""

    def __init__(self, size_mb: int, uid: int, gid: int) -> None:
        self.size_mb = size_mb
        self.uid, self.gid = uid, gid
        self.capped = size_mb > 0 and os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None
        if size_mb > 0 and not self.capped:
            logger.warning("workspaces are not size-capped: loop mounts need root and mkfs.ext4")

    async def create(self, directory: Path) -> None:
        """Make `directory` an empty workspace owned by the sandbox user.

        Raises:
            WorkspaceError: making or mounting the image failed.
        """
        directory.mkdir(mode=0o700)
        if not self.capped:
            os.chown(directory, self.uid, self.gid)
            return
        image = self.image_of(directory)
        with open(image, "wb") as sparse:
            sparse.truncate(self.size_mb * 1024 * 1024)
        owner = f"root_owner={self.uid}:{self.gid}"
        await run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", owner, str(image))
        await run("mount", "-o", "loop,nodev,nosuid", str(image), str(directory))
        (directory / "lost+found").rmdir()  # root-owned clutter the sandbox could not remove

    async def remove(self, directory: Path) -> None:
        """Unmount and delete a workspace and its image; missing parts are fine."""
        if directory.is_mount():
            await run("umount", str(directory))
        shutil.rmtree(directory, ignore_errors=True)
        self.image_of(directory).unlink(missing_ok=True)

    async def remove_all(self, root: Path) -> None:
        """Unmount every workspace below `root` (left by an earlier run) so the tree can be deleted."""
        for mount_point in mounts_under(root):
            await run("umount", "-l", str(mount_point))

    def write(self, directory: Path, relative: str, data: bytes) -> None:
        """Write a file inside a workspace the sandbox controls, creating its directories; the file and the
        directories belong to the sandbox user.

        Raises:
            WorkspaceError: the path is not confined to the workspace, or the write failed.
        """
        with self._parent(directory, relative, create=True) as (parent, name):
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
            file_fd = os.open(name, flags, 0o644, dir_fd=parent)
            try:
                if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                    raise WorkspaceError(f"{relative!r} is not a regular file")
                os.fchown(file_fd, self.uid, self.gid)
                remaining = memoryview(data)
                while remaining:
                    remaining = remaining[os.write(file_fd, remaining) :]
            finally:
                os.close(file_fd)

    def read(self, directory: Path, relative: str, limit: int) -> bytes:
        """A regular file's content, at most `limit` bytes. Raises: WorkspaceError (missing, not confined, too big)."""
        with self._parent(directory, relative, create=False) as (parent, name):
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
            try:
                info = os.fstat(file_fd)
                if not stat.S_ISREG(info.st_mode):
                    raise WorkspaceError(f"{relative!r} is not a regular file")
                if info.st_size > limit:
                    raise WorkspaceError(f"{relative!r} is larger than {limit} bytes")
                chunks, size = [], 0
                while chunk := os.read(file_fd, 1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise WorkspaceError(f"{relative!r} is larger than {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(file_fd)

    def delete(self, directory: Path, relative: str) -> None:
        """Remove a file (a symlink itself, never its target). Raises: WorkspaceError."""
        with self._parent(directory, relative, create=False) as (parent, name):
            if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise WorkspaceError(f"{relative!r} is a directory")
            os.unlink(name, dir_fd=parent)

    @staticmethod
    def listing(directory: Path, limit: int = 10_000) -> list[tuple[str, int]]:
        """Regular files below the workspace with their sizes; symlinks are neither followed nor listed. Names are
        as the file system has them: bytes that are not UTF-8 as surrogate escapes (`os.fsencode` restores them)."""
        found: list[tuple[str, int]] = []
        for root, _dirs, files, root_fd in os.fwalk(directory, follow_symlinks=False):
            for name in files:
                try:
                    info = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                except FileNotFoundError:  # the code removed it meanwhile
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append((os.path.relpath(os.path.join(root, name), directory), info.st_size))
                    if len(found) >= limit:
                        return sorted(found)
        return sorted(found)

    @contextlib.contextmanager
    def _parent(self, directory: Path, relative: str, *, create: bool) -> Iterator[tuple[int, str]]:
        """The directory fd holding `relative`'s last component, reached without following any symlink.

        Raises:
            WorkspaceError: an absolute path, `..`, a component that is a symlink or not a directory, or any OSError.
        """
        path = PurePosixPath(relative)
        parts = path.parts
        if not parts or path.is_absolute() or any(part in ("..", ".") for part in parts) or "\0" in relative:
            raise WorkspaceError(f"path {relative!r} is not inside the workspace")
        fd = -1
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            for part in parts[:-1]:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        os.chown(part, self.uid, self.gid, dir_fd=fd, follow_symlinks=False)
                    except FileExistsError:
                        pass
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
            yield fd, parts[-1]
        except OSError as exc:
            raise WorkspaceError(f"{relative!r}: {exc.strerror or exc}") from exc
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def image_of(directory: Path) -> Path:
        return directory.with_name(directory.name + ".img")
