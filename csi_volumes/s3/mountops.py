"""Thin, blocking mount operations: run a mounter detached, bind, unmount, wait.

Called from threads (`asyncio.to_thread`). The mounter runs in a new session with its
output in a file, not a pipe: it daemonizes, and its daemon must neither hold our pipes
open nor belong to our process group, so killing the driver leaves the mount serving.
"""

import json
import subprocess
import time
from pathlib import Path

from csi_volumes.errors import MountError
from csi_volumes.mountinfo import mount_at
from csi_volumes.s3.mounters import MountCommand

MOUNT_TIMEOUT_S = 60.0


def _tail(path: Path | None, limit: int = 800) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[-limit:]


def run_mounter(cmd: MountCommand, mountpoint: Path, launcher_log: Path) -> None:
    """Start the FUSE daemon and return once `mountpoint` shows its mount."""
    with launcher_log.open("wb") as out:
        try:
            proc = subprocess.run(
                cmd.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=MOUNT_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError as err:
            raise MountError(f"mounter {cmd.argv[0]} is not installed: {err}") from err
        except subprocess.TimeoutExpired as err:
            raise MountError(
                f"{cmd.argv[0]} did not mount {mountpoint} within {MOUNT_TIMEOUT_S:.0f} s"
            ) from err
    if proc.returncode != 0:
        detail = _tail(launcher_log) or _tail(cmd.log_file)
        raise MountError(
            f"{cmd.argv[0]} failed to mount {mountpoint} (exit {proc.returncode}): {detail}"
        )
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        entry = mount_at(mountpoint)
        if entry is not None and entry.fstype == cmd.fstype:
            return
        time.sleep(0.05)
    detail = _tail(cmd.log_file) or _tail(launcher_log)
    raise MountError(f"{cmd.argv[0]} exited but {mountpoint} is not mounted: {detail}")


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise MountError(f"{what} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def bind_mount(source: Path, target: Path, *, read_only: bool) -> None:
    _run(["mount", "--bind", str(source), str(target)], f"bind mount {source} -> {target}")
    if read_only:
        try:
            _run(
                ["mount", "-o", "remount,bind,ro", str(target)],
                f"read-only remount of {target}",
            )
        except MountError:
            unmount(target, lazy=True)
            raise


def unmount(path: Path, *, lazy: bool = False) -> None:
    """Unmount `path`; a busy or dead mount is detached lazily. No-op if not mounted."""
    if mount_at(path) is None:
        return
    if not lazy:
        proc = subprocess.run(
            ["umount", str(path)], capture_output=True, text=True, check=False, timeout=60
        )
        if proc.returncode == 0 or mount_at(path) is None:
            return
    _run(["umount", "-l", str(path)], f"unmount of {path}")


def unmount_all(path: Path, *, lazy: bool = False) -> None:
    """Unmount every mount stacked on `path`."""
    for _ in range(16):
        if mount_at(path) is None:
            return
        unmount(path, lazy=lazy)
    raise MountError(f"{path} is still mounted after 16 unmounts")


def daemon_pids(mountpoint: Path) -> list[int]:
    """PIDs of s3fs/rclone daemons serving `mountpoint` (their argv names it)."""
    wanted = str(mountpoint).encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv and Path(argv[0].decode(errors="replace")).name in ("s3fs", "rclone"):
            pids.append(int(proc.name))
    return pids


def wait_exit(pids: list[int], timeout_s: float) -> list[int]:
    """Wait for processes (not our children) to end; returns those still running."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if Path(f"/proc/{p}").exists()]
    return alive


def wait_rclone_uploads(rc_socket: Path, timeout_s: float) -> None:
    """Wait until rclone's VFS has no queued or running uploads (asked over its rc socket)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = subprocess.run(
            ["rclone", "rc", "--unix-socket", str(rc_socket), "vfs/stats"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode != 0:
            raise MountError(f"rclone rc vfs/stats on {rc_socket} failed: {proc.stderr.strip()}")
        cache = json.loads(proc.stdout).get("diskCache") or {}
        if not cache.get("uploadsInProgress") and not cache.get("uploadsQueued"):
            return
        time.sleep(0.2)
    raise MountError(f"rclone still has uploads pending after {timeout_s:.0f} s ({rc_socket})")


def unmount_fuse(
    mountpoint: Path,
    *,
    rc_socket: Path | None = None,
    timeout_s: float = 120.0,
    wait_for_exit: bool = True,
) -> None:
    """Unmount a FUSE mount once its data is in S3, so what was written before unstage is
    in S3 when unstage returns: rclone's pending uploads are waited for (over its rc
    socket), then its exit. s3fs uploads a file before close() returns, so its data is
    there once the (non-lazy) unmount succeeds; it takes another 1.5-2 s to exit, which
    `wait_for_exit=False` does not wait for (it would be each pod's delete time)."""
    pids = daemon_pids(mountpoint)
    if rc_socket is not None and rc_socket.exists() and pids:
        wait_rclone_uploads(rc_socket, timeout_s)
    unmount_all(mountpoint)
    if not wait_for_exit:
        return
    alive = wait_exit(pids, timeout_s)
    if alive:
        raise MountError(
            f"FUSE daemon(s) {alive} of {mountpoint} still running {timeout_s:.0f} s after unmount"
        )
