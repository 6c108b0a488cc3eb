"""Waiting for a live playlist to move on (LL-HLS blocking reloads, preload-hinted parts) without a
thread per waiting viewer: one polling task per playlist file, however many requests wait on it, wakes
them all on the event loop when the file changes. The packager may be another process on another
machine sharing the folder, so the file itself is the signal (one stat() every POLL_S while anyone waits).
"""
from __future__ import annotations

import asyncio
import os
import stat as stat_mode
from pathlib import Path
from typing import Callable, TypeVar

from hls_packager.playlist import PlaylistPosition, playlist_position

POLL_S = 0.02  # the packager adds a part every ~0.33 s; 20 ms keeps the added delay small
T = TypeVar("T")
# No symlink as the last component (ELOOP), and never wait on a FIFO: only regular files are served.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def regular_file_read(path: Path) -> bytes:
    """The bytes of `path` if it is a regular file itself; OSError otherwise (missing, a folder, a
    symlink, a device): a symlink put into an HLS folder must not serve what it points at."""
    fd = os.open(path, _OPEN_FLAGS)
    with open(fd, "rb", closefd=True) as handle:
        if not stat_mode.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"not a regular file: {path}")
        return handle.read()


class PlaylistWatch:
    """The newest text of one playlist file and a condition its waiters sleep on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = ""
        self.position: PlaylistPosition | None = None
        self.waiters = 0
        self._stamp: tuple[int, int] | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task | None = None

    def refresh(self) -> bool:
        """Read the file again if it changed (a rename by the packager gives a new inode or mtime)."""
        try:
            stat = os.lstat(self.path)
            if not stat_mode.S_ISREG(stat.st_mode):
                raise IsADirectoryError(f"not a regular file: {self.path}")
            stamp = (stat.st_ino, stat.st_mtime_ns)
            if stamp == self._stamp:
                return False
            text = regular_file_read(self.path).decode("utf-8")  # a few KB in the page cache
        except OSError:  # gone (the folder was removed), or not a regular file: nothing to serve
            changed = self._stamp is not None
            self._stamp, self.text, self.position = None, "", None
            return changed
        self._stamp, self.text, self.position = stamp, text, playlist_position(text)
        return True

    async def wait_for(self, check: Callable[["PlaylistWatch"], T | None], *, timeout_s: float) -> T | None:
        """The first non-None `check(self)`, checked now and after each change; None on timeout."""
        self.refresh()
        result = check(self)
        if result is not None:
            return result
        self.waiters += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            async with self._changed:
                return await asyncio.wait_for(self._changed.wait_for(lambda: check(self)), timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            self.waiters -= 1

    async def _poll(self) -> None:
        while self.waiters > 0:
            await asyncio.sleep(POLL_S)
            if self.refresh():
                async with self._changed:
                    self._changed.notify_all()


_watches: dict[tuple[int, Path], PlaylistWatch] = {}


def playlist_watch(path: Path) -> PlaylistWatch:
    """The shared watch of `path` on the running loop (entries without waiters are dropped as we go)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k, w in _watches.items() if w.waiters == 0 and k[1] != path]:
        del _watches[key]
    watch = _watches.get((loop_id, path))
    if watch is None:
        watch = _watches[(loop_id, path)] = PlaylistWatch(path)
    return watch
