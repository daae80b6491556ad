"""Put a replaced volume mount back into a running container.

A volume's host path that is itself a mount point (a CSI target: a bind of a FUSE mount) can
be replaced on the host while containers run — a CSI driver that finds its FUSE daemon dead
mounts again and binds the target again. A container's bind of the old mount stays dead
("Transport endpoint is not connected") until the container restarts. The runtime notices
the mount table change (`MountWatch`: poll() on /proc/self/mountinfo wakes on any mount or
unmount in our namespace), compares the mount each running container got at such a source
(`mount_table`) with the one there now and, when the container's process still holds the
old one at that path (so a reused PID is never touched), re-binds the new mount at the same
place inside the container, without restarting it:

    open_tree(host_path, OPEN_TREE_CLONE | AT_RECURSIVE)     a detached copy, in our ns
    setns(<container pid>/ns/mnt)                             (a single-threaded child)
    umount2(dest, MNT_DETACH)                                 the dead bind goes
    move_mount(tree → dest); mount_setattr(ro, propagation)   the new one, as the old was

The child is `python3 -m cri.runtime.remount` (setns into a mount namespace is refused to a
multi-threaded process). Linux 5.12+ (mount_setattr); older kernels log why and skip.
"""

import contextlib
import os
import select
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cri.oci import linux
from cri.oci.spec import MS_REC, PROPAGATION_FLAGS


def mount_table(mountinfo: str) -> dict[str, str]:
    """Mount point → "<major:minor> <root>" of the mount on top there, from mountinfo text.

    That pair, not the mount id, names a mount: ids are reused as soon as they are freed,
    while a superblock's device number stays taken as long as any mount of it (such as a
    running container's bind) exists, so a replacement always shows another one."""
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        fields = line.split(" ", 5)
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            out[point] = f"{fields[2]} {fields[3]}"
    return out


def current_mount_table() -> dict[str, str]:
    return mount_table(Path("/proc/self/mountinfo").read_text())


def mount_in(pid: int, path: str) -> str | None:
    """What process `pid` sees mounted at `path` (its mountinfo is relative to its root)."""
    try:
        return mount_table(Path(f"/proc/{pid}/mountinfo").read_text()).get(path)
    except OSError:
        return None


def rebind_in_container(
    pid: int, host_path: str, dest: str, *, readonly: bool, propagation: str
) -> None:
    """In this (single-threaded) process: replace `dest` in `pid`'s mount namespace with a
    recursive copy of what is mounted at `host_path` in ours; `propagation` is an OCI
    option (rprivate, rslave, rshared)."""
    step = f"open_tree {host_path}"
    try:
        tree = linux.open_tree(host_path, linux.OPEN_TREE_CLONE | linux.AT_RECURSIVE | os.O_CLOEXEC)
        step = f"setns into the mount namespace of pid {pid}"
        ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(ns, linux.CLONE_NEWNS)
        finally:
            os.close(ns)
        os.chdir("/")
        # the dead bind (and anything stacked on it) goes; a stat of it would hang or fail
        with contextlib.suppress(OSError):  # nothing mounted there any more
            linux.umount2(dest, linux.MNT_DETACH)
        step = f"move_mount to {dest}"
        linux.move_mount_fd(tree, dest)
        step = f"mount_setattr {dest}"
        linux.mount_setattr(
            dest,
            linux.AT_RECURSIVE,
            attr_set=linux.MOUNT_ATTR_RDONLY if readonly else 0,
            propagation=PROPAGATION_FLAGS[propagation] & ~MS_REC,
        )
    except OSError as err:
        raise OSError(err.errno, f"{step}: {err.strerror}") from None


class MountWatch:
    """Calls `on_change` (from a daemon thread) whenever our mount table changes."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="mount-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLPRI)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._wake_r in ready:
                return
            if self._fd in ready:
                self._on_change()

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2)
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)


def stale_mounts(
    recorded: dict[str, str], hosts: dict[str, str], table: dict[str, str]
) -> Iterable[tuple[str, str]]:
    """(container path, new mount) for each recorded source now covered by another mount; a
    source that is no longer a mount point (its volume is being torn down) is left alone."""
    for cpath, old in recorded.items():
        new = table.get(hosts.get(cpath, ""))
        if new is not None and new != old:
            yield cpath, new


def main(argv: list[str]) -> int:
    pid, host_path, dest, readonly, propagation = argv
    try:
        rebind_in_container(
            int(pid), host_path, dest, readonly=readonly == "ro", propagation=propagation
        )
    except OSError as err:
        print(f"re-binding {host_path} at {dest} in pid {pid}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
