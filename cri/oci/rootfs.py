"""The container's filesystem view, built inside its new mount namespace.

    / → rslave (nothing we mount leaks out; host mounts still reach rslave volumes)
    bind rootfs onto itself ─▶ spec mounts in order ─▶ /dev nodes and links ─▶ pivot_root
    ─▶ (after sysctls) readonlyPaths, maskedPaths ─▶ read-only / if asked

Mount destinations are resolved inside the rootfs, following the image's
symlinks without ever leaving it (`secure_join`), so an image cannot point a
mount at the host. Device nodes are the host's, bind-mounted. Every failure is a
SysError naming the step, e.g. "mount proc on /proc: Operation not permitted".
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH102, PTH103, PTH108, PTH110, PTH115, PTH116, PTH120

from __future__ import annotations

import os
import stat

from cri.oci import linux
from cri.oci.errors import SysError, os_error
from cri.oci.spec import (
    DEFAULT_DEVICES,
    DEFAULT_SYMLINKS,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SLAVE,
    PROPAGATION_FLAGS,
    Mount,
    Spec,
)

ELOOP = 40
ENOENT = 2


def secure_join(root: str, unsafe: str) -> str:
    """`root + unsafe` with symlinks resolved as if `root` were `/`: never outside root."""
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        path = root + "/" + "/".join([*resolved, part])
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 255:
                raise OSError(ELOOP, os.strerror(ELOOP), unsafe)
            target = os.readlink(path)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.rstrip("/") + "/" + "/".join(resolved)


def _mkdir_all(path: str) -> None:
    os.makedirs(path, 0o755, exist_ok=True)


def _touch(path: str) -> None:
    if os.path.lexists(path):
        return
    _mkdir_all(os.path.dirname(path))
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _mount(
    src: str | None, dest: str, fstype: str | None, flags: int, data: str, what: str
) -> None:
    try:
        linux.mount(src, dest, fstype, flags, data)
    except OSError as err:
        raise os_error(what, err) from err


def statvfs_mount_flags(path: str) -> int:
    """The per-mount flags of `path` as MS_* bits, to keep them across a bind remount."""
    f = os.statvfs(path).f_flag
    flags = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | 0x10 | 0x40 | 0x400 | 0x800)
    if f & 0x1000:  # ST_RELATIME
        flags |= MS_RELATIME
    return flags


def _bind(m: Mount, dest: str, bundle: str) -> None:
    src = m.source if m.source.startswith("/") else f"{bundle}/{m.source}"
    try:
        is_dir = stat.S_ISDIR(os.stat(src).st_mode)
    except OSError as err:
        raise os_error(f"bind mount source {src} for {m.destination}", err) from err
    try:
        _mkdir_all(dest) if is_dir else _touch(dest)
    except OSError as err:
        raise os_error(f"create mount point {m.destination}", err) from err
    flags = m.options.flags
    what = f"bind mount {src} on {m.destination}"
    _mount(src, dest, None, MS_BIND | (flags & MS_REC), "", what)
    extra = flags & ~(MS_BIND | MS_REC | MS_REMOUNT)
    if extra:
        _mount(None, dest, None, MS_BIND | MS_REMOUNT | extra, "", f"remount {m.destination}")


def _cgroup_mount(m: Mount, dest: str, cgroup_dirs: dict[str, str]) -> None:
    """/sys/fs/cgroup: the container's own cgroup directory of each hierarchy.

    v1/hybrid: a tmpfs with one bind per hierarchy (`cpu`, `memory`, …, `unified`);
    v2: the container's directory itself. Read-only when the options say "ro".
    """
    ro = m.options.flags & MS_RDONLY
    base = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _mkdir_all(dest)
    if list(cgroup_dirs) == ["/sys/fs/cgroup"]:
        src = cgroup_dirs["/sys/fs/cgroup"]
        _mount(src, dest, None, MS_BIND | MS_REC, "", f"bind cgroup {src} on {m.destination}")
        _mount(None, dest, None, MS_BIND | MS_REMOUNT | base | ro, "",
               f"remount {m.destination}")  # fmt: skip
        return
    _mount("cgroup", dest, "tmpfs", base, "mode=755", f"mount tmpfs on {m.destination}")
    for mountpoint, src in sorted(cgroup_dirs.items()):
        name = mountpoint.rsplit("/", 1)[-1]
        sub = f"{dest}/{name}"
        os.mkdir(sub, 0o755)
        _mount(src, sub, None, MS_BIND | MS_REC, "", f"bind cgroup {src} on {m.destination}/{name}")
        _mount(None, sub, None, MS_BIND | MS_REMOUNT | base | ro, "",
               f"remount {m.destination}/{name}")  # fmt: skip
    if ro:
        _mount("cgroup", dest, "tmpfs", MS_REMOUNT | base | MS_RDONLY, "mode=755",
               f"remount {m.destination} read-only")  # fmt: skip


def mount_one(m: Mount, rootfs: str, bundle: str, cgroup_dirs: dict[str, str]) -> None:
    try:
        dest = secure_join(rootfs, m.destination)
    except OSError as err:
        raise os_error(f"resolve mount point {m.destination}", err) from err
    if m.is_bind:
        _bind(m, dest, bundle)
    elif m.kind == "cgroup" or m.kind == "cgroup2":
        _cgroup_mount(m, dest, cgroup_dirs)
    else:
        try:
            _mkdir_all(dest)
        except OSError as err:
            raise os_error(f"create mount point {m.destination}", err) from err
        flags = m.options.flags & ~MS_REMOUNT
        _mount(m.source or m.kind, dest, m.kind, flags, m.options.data,
               f"mount {m.kind} on {m.destination}")  # fmt: skip
    for prop in m.options.propagation:
        _mount(None, dest, None, prop, "", f"set propagation of {m.destination}")


def _setup_dev(spec: Spec, rootfs: str) -> None:
    dev = f"{rootfs}/dev"
    for name in DEFAULT_DEVICES:
        target = f"{dev}/{name}"
        try:
            _touch(target)
        except OSError as err:
            raise os_error(f"create /dev/{name}", err) from err
        _mount(f"/dev/{name}", target, None, MS_BIND, "", f"bind /dev/{name}")
    for d in spec.devices:
        target = secure_join(rootfs, d.path)
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[d.kind]
        try:
            _mkdir_all(os.path.dirname(target))
            if os.path.lexists(target):
                os.unlink(target)
            os.mknod(target, kind | (d.file_mode & 0o7777), os.makedev(d.major, d.minor))
            os.chown(target, d.uid, d.gid)
        except OSError as err:
            raise os_error(f"create device {d.path}", err) from err
    links = list(DEFAULT_SYMLINKS)
    if os.path.exists("/proc/kcore"):
        links.append(("/proc/kcore", "/dev/core"))
    for target, link in links:
        path = f"{rootfs}{link}"
        if os.path.lexists(path):
            continue
        try:
            os.symlink(target, path)
        except OSError as err:
            raise os_error(f"create symlink {link}", err) from err
    if spec.process.terminal:
        try:
            _touch(f"{dev}/console")
        except OSError as err:
            raise os_error("create /dev/console", err) from err


def prepare(spec: Spec, *, rootfs: str, bundle: str, cgroup_dirs: dict[str, str]) -> None:
    """Everything up to and including pivot_root. The caller's cwd ends at the new /."""
    root_prop = PROPAGATION_FLAGS.get(spec.rootfs_propagation, MS_SLAVE | MS_REC)
    _mount(None, "/", None, root_prop, "", "make / " + (spec.rootfs_propagation or "rslave"))
    _mount(rootfs, rootfs, None, MS_BIND | MS_REC, "", f"bind rootfs {rootfs} onto itself")
    for m in spec.mounts:
        mount_one(m, rootfs, bundle, cgroup_dirs)
    if any(m.destination == "/dev" and not m.is_bind for m in spec.mounts):
        _setup_dev(spec, rootfs)
    cwd = secure_join(rootfs, spec.process.cwd)
    try:
        _mkdir_all(cwd)
    except OSError as err:
        raise os_error(f"create working directory {spec.process.cwd}", err) from err
    pivot(rootfs)


def pivot(rootfs: str) -> None:
    """pivot_root(".", ".") and a lazy unmount of the old root stacked beneath (runc's way)."""
    try:
        old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        new = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(new)
            linux.pivot_root(".", ".")
            os.fchdir(old)
            linux.mount(None, ".", None, MS_SLAVE | MS_REC)
            linux.umount2(".", linux.MNT_DETACH)
            os.chdir("/")
        finally:
            os.close(old)
            os.close(new)
    except OSError as err:
        raise os_error(f"pivot_root to {rootfs}", err) from err


def readonly_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            linux.mount(path, path, None, MS_BIND | MS_REC)
        except OSError as err:
            if err.errno == ENOENT:
                continue
            raise os_error(f"bind {path} read-only", err) from err
        try:
            flags = statvfs_mount_flags(path)
            linux.mount(path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
        except OSError as err:
            raise os_error(f"remount {path} read-only", err) from err


def mask_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise os_error(f"mask {path}", err) from err
        try:
            if is_dir:
                linux.mount("tmpfs", path, "tmpfs", MS_RDONLY, "")
            else:
                linux.mount("/dev/null", path, None, MS_BIND)
        except OSError as err:
            raise os_error(f"mask {path}", err) from err


def readonly_root() -> None:
    try:
        flags = statvfs_mount_flags("/")
        linux.mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
    except OSError as err:
        raise os_error("remount / read-only", err) from err


def write_sysctls(sysctl: tuple[tuple[str, str], ...]) -> None:
    for key, value in sysctl:
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as err:
            raise os_error(f"set sysctl {key}={value}", err) from err


def require_mount_ns(spec: Spec) -> None:
    ns = spec.namespace("mount")
    if ns is None:
        raise SysError("a container needs its own mount namespace", step="check spec")
