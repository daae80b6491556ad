"""FUSE mount commands for a volume, as plain data (s3fs-fuse by default, rclone as an option).

`mount_command` is pure: a volume, its credentials and options in, an argv plus the small
files it needs (credentials, mode 0600) out. `node.py` writes the files and runs the argv
in a session of its own, so the FUSE daemon outlives the driver.

A pod's fsGroup (CSI `volume_mount_group`) makes every file and directory group-owned by
it and group-writable. rclone then lets the kernel check permissions (`--default-permissions`,
which knows a process's supplementary groups, where a pod's fsGroup is). s3fs always does its
own check, which finds group members by name in the node's /etc/group and so never sees a
pod's fsGroup: an s3fs group mount is opened to other users as well (umask 0 for group and
others) — reachable only through the pod's bind mount and the kubelet's private staging path.

Both mounters daemonize themselves once the mount is up (s3fs by default, rclone with
`--daemon`, which waits for the mount), so the launcher's exit status tells whether
the mount came up, and the daemon is nobody's child.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

from csi_volumes.s3.params import CacheMode, Credentials, Mounter, MountOptions, VolumeRef

#: I/O against a stopped S3 server fails within seconds instead of s3fs's 300 s connect timeout.
S3FS_TIMEOUTS = ("connect_timeout=5", "readwrite_timeout=30", "retries=2")


@dataclass(frozen=True)
class MountCommand:
    argv: tuple[str, ...]
    files: dict[Path, str] = field(default_factory=dict)  # written 0600 before argv runs
    fstype: str = ""  # what /proc/self/mountinfo shows once mounted
    log_file: Path | None = None
    rc_socket: Path | None = None  # rclone's remote control, to see pending uploads


def _s3fs(
    *,
    ref: VolumeRef,
    creds: Credentials,
    options: MountOptions,
    mountpoint: Path,
    work_dir: Path,
    read_only: bool,
    mount_group: int | None,
) -> MountCommand:
    if mount_group is not None:
        options = replace(options, gid=mount_group, umask=(options.umask or 0) & 0o700)
    passwd = work_dir / "passwd-s3fs"
    log = work_dir / "mounter.log"
    source = f"{ref.bucket}:/{ref.prefix}" if ref.prefix else ref.bucket
    opts = [
        f"passwd_file={passwd}",
        f"url={creds.endpoint}",
        f"endpoint={creds.region}",
        "use_path_request_style",
        "allow_other",
        f"logfile={log}",
        "dbglevel=warn",
        *S3FS_TIMEOUTS,
    ]
    if options.uid is not None:
        opts.append(f"uid={options.uid}")
    if options.gid is not None:
        opts.append(f"gid={options.gid}")
    if options.umask is not None:
        opts.append(f"umask={options.umask:04o}")
        opts.append(f"mp_umask={options.umask:04o}")
    if options.cache is not CacheMode.NONE:
        opts.append(f"use_cache={work_dir / 'cache'}")
        if options.cache is CacheMode.WRITES:
            opts.append("del_cache")
    if read_only or options.read_only:
        opts.append("ro")
    return MountCommand(
        argv=("s3fs", source, str(mountpoint), "-o", ",".join(opts)),
        files={passwd: f"{creds.access_key_id}:{creds.secret_access_key}\n"},
        fstype="fuse.s3fs",
        log_file=log,
    )


def _rclone(
    *,
    ref: VolumeRef,
    creds: Credentials,
    options: MountOptions,
    mountpoint: Path,
    work_dir: Path,
    read_only: bool,
    mount_group: int | None,
) -> MountCommand:
    if mount_group is not None:
        umask = (options.umask if options.umask is not None else 0o002) & ~0o070
        options = replace(options, gid=mount_group, umask=umask)
    config = work_dir / "rclone.conf"
    log = work_dir / "mounter.log"
    remote = f"s3vol:{ref.bucket}/{ref.prefix}" if ref.prefix else f"s3vol:{ref.bucket}"
    text = "\n".join(
        [
            "[s3vol]",
            "type = s3",
            "provider = Other",
            f"access_key_id = {creds.access_key_id}",
            f"secret_access_key = {creds.secret_access_key}",
            f"endpoint = {creds.endpoint}",
            f"region = {creds.region}",
            "force_path_style = true",
            "no_check_bucket = true",
            "",
        ]
    )
    argv = [
        "rclone",
        "mount",
        remote,
        str(mountpoint),
        "--config",
        str(config),
        "--daemon",
        "--allow-other",
        "--log-file",
        str(log),
        "--log-level",
        "NOTICE",
        "--low-level-retries",
        "2",
        "--contimeout",
        "5s",
        "--timeout",
        "30s",
        "--vfs-cache-mode",
        {CacheMode.NONE: "off", CacheMode.WRITES: "writes", CacheMode.FULL: "full"}[options.cache],
        "--cache-dir",
        str(work_dir / "cache"),
        # upload a closed file at once, and let unstage ask (vfs/stats over this socket)
        # whether uploads are pending before it unmounts: rclone drops them on unmount
        "--vfs-write-back",
        "0s",
        "--rc",
        "--rc-no-auth",
        "--rc-addr",
        f"unix://{work_dir / 'rc.sock'}",
    ]
    if options.uid is not None:
        argv += ["--uid", str(options.uid)]
    if options.gid is not None:
        argv += ["--gid", str(options.gid)]
    if options.umask is not None:
        argv += ["--umask", f"{options.umask:04o}"]
    if mount_group is not None:
        argv.append("--default-permissions")
    if read_only or options.read_only:
        argv.append("--read-only")
    return MountCommand(
        argv=tuple(argv),
        files={config: text},
        fstype="fuse.rclone",
        log_file=log,
        rc_socket=work_dir / "rc.sock",
    )


def mount_command(
    *,
    ref: VolumeRef,
    creds: Credentials,
    options: MountOptions,
    mountpoint: Path,
    work_dir: Path,
    read_only: bool = False,
    mount_group: int | None = None,
) -> MountCommand:
    """The command that FUSE-mounts `ref` at `mountpoint`; `work_dir` holds its private files;
    `mount_group` is a pod's fsGroup to make the files' group (see the module doc)."""
    build = _s3fs if options.mounter is Mounter.S3FS else _rclone
    return build(
        ref=ref,
        creds=creds,
        options=options,
        mountpoint=mountpoint,
        work_dir=work_dir,
        read_only=read_only,
        mount_group=mount_group,
    )
