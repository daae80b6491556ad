"""Thin, blocking mount operations: run a mounter detached, bind, unmount, wait.

Called from threads (`asyncio.to_thread`). The mounter runs in a new session with its
output in a file, not a pipe: it daemonizes, and its daemon must neither hold our pipes
open nor belong to our process group, so killing the driver leaves the mount serving.
"""

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
