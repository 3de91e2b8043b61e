"""Notice, without a system call per check, that a file we hold open lost its name.

The audit journal acknowledges strict writes on the event loop's hot path and must not do so once
the database or the journal file was removed or replaced (writes would go to a file nobody will
read). Checking with ``fstat`` before every acknowledgement costs two system calls per statement,
which on a virtual machine is a measurable share of a pgbench transaction. Instead the kernel
tells us: an inotify watch on each file (``IN_ATTRIB``: its link count changed;
``IN_MOVE_SELF``, ``IN_DELETE_SELF``) wakes the event loop, which then checks that each path
still names the file held open and raises the flag the hot path reads (a file moved elsewhere
counts as removed). An acknowledgement in the same turn of the loop as the removal can still
pass; the next group commit (a few milliseconds later) checks the database file itself.

Where inotify is not available, :meth:`FileWatch.ok` checks with ``fstat`` and ``stat`` every time.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Sequence

log = logging.getLogger("callgate.store")

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_ATTRIB = 0x00000004
_IN_MOVE_SELF = 0x00000800
_IN_DELETE_SELF = 0x00000400


def _named(fds: Sequence[int], paths: Sequence[str]) -> bool:
    """Whether each path still names the file open on its descriptor."""
    try:
        for fd, path in zip(fds, paths, strict=True):
            held, named = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
                return False
    except OSError:
        return False
    return True


class FileWatch:
    """Watches open descriptors (and their paths) for losing their name; :meth:`ok` is cheap."""

    def __init__(self, files: Sequence[tuple[int, str]]) -> None:
        """``files``: (open descriptor, path) pairs; the descriptors stay the caller's."""
        self._fds = [fd for fd, _ in files]
        self._paths = [path for _, path in files]
        self._inotify = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken = False

    def ok(self) -> bool:
        """Whether every file still has a name. Call on the event loop's thread."""
        if self._broken:
            return False
        loop = self._loop
        if loop is None or loop.is_closed():  # not get_running_loop(): that is a getpid() call
            if not self._attach():
                return _named(self._fds, self._paths)  # no inotify: ask every time
            return not self._broken
        return True

    def _attach(self) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to deliver notifications: the caller asks every time
            return False
        if self._inotify == -2:  # tried, unavailable
            return False
        self.close()  # a watch from another (finished) event loop
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            mask = _IN_ATTRIB | _IN_MOVE_SELF | _IN_DELETE_SELF
            for path in self._paths:
                if int(libc.inotify_add_watch(fd, os.fsencode(path), mask)) < 0:
                    os.close(fd)
                    raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        except (OSError, AttributeError) as exc:
            log.debug("no inotify (%s): file checks on every strict write", exc)
            self._inotify = -2
            return False
        # The watch starts now: a removal before it would go unnoticed, so check once.
        if not _named(self._fds, self._paths):
            os.close(fd)
            self._broken = True
            return True
        self._inotify = fd
        self._loop = loop
        loop.add_reader(fd, self._on_event)
        return True

    def _on_event(self) -> None:
        try:
            while os.read(self._inotify, 4096):
                pass
        except BlockingIOError:
            pass
        except OSError:
            self._broken = True
        if not _named(self._fds, self._paths):
            self._broken = True

    def close(self) -> None:
        if self._inotify >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify)
            os.close(self._inotify)
            self._inotify = -1
