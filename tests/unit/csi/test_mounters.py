"""FUSE command lines built from volume, credentials and options (no root, no mount)."""

from pathlib import Path

from csi_volumes.s3.mounters import mount_command
from csi_volumes.s3.params import CacheMode, Credentials, Mounter, MountOptions, VolumeRef

CREDS = Credentials(endpoint="http://127.0.0.1:8333", access_key_id="AK", secret_access_key="SK")
WORK = Path("/var/lib/kpy/csi/volumes/abc")


def opts_of(argv: tuple[str, ...]) -> list[str]:
    return argv[argv.index("-o") + 1].split(",")


def test_s3fs_prefix_volume_command() -> None:
    """s3fs mounts bucket:/prefix with path-style requests, the endpoint, a 0600 passwd file."""
    cmd = mount_command(
        ref=VolumeRef("b", "pvc-1"),
        creds=CREDS,
        options=MountOptions(uid=1000, gid=1000, umask=0o022, cache=CacheMode.WRITES),
        mountpoint=Path("/mnt/s"),
        work_dir=WORK,
    )
    assert cmd.argv[:3] == ("s3fs", "b:/pvc-1", "/mnt/s")
    opts = opts_of(cmd.argv)
    for expected in (
        f"passwd_file={WORK}/passwd-s3fs", "url=http://127.0.0.1:8333", "use_path_request_style",
        "uid=1000", "gid=1000", "umask=0022", f"use_cache={WORK}/cache", "allow_other",
    ):  # fmt: skip
        assert expected in opts
    assert "ro" not in opts
    assert cmd.files == {WORK / "passwd-s3fs": "AK:SK\n"}
    assert "SK" not in " ".join(cmd.argv)  # the secret never shows in ps
    assert cmd.fstype == "fuse.s3fs"


def test_s3fs_read_only_and_bounded_timeouts() -> None:
    """Read-only comes from the access mode or the option; timeouts bound I/O on a dead server."""
    cmd = mount_command(
        ref=VolumeRef("b"),
        creds=CREDS,
        options=MountOptions(),
        mountpoint=Path("/m"),
        work_dir=WORK,
        read_only=True,
    )
    opts = opts_of(cmd.argv)
    assert cmd.argv[1] == "b" and "ro" in opts and "connect_timeout=5" in opts
    cmd = mount_command(
        ref=VolumeRef("b"),
        creds=CREDS,
        options=MountOptions(read_only=True),
        mountpoint=Path("/m"),
        work_dir=WORK,
    )
    assert "ro" in opts_of(cmd.argv)


def test_rclone_command_keeps_secrets_in_its_config_file() -> None:
    """rclone mounts remote s3vol:bucket/prefix as a daemon, with its credentials in rclone.conf."""
    cmd = mount_command(
        ref=VolumeRef("b", "p"),
        creds=CREDS,
        options=MountOptions(mounter=Mounter.RCLONE, cache=CacheMode.FULL, uid=7, read_only=True),
        mountpoint=Path("/m"),
        work_dir=WORK,
    )
    argv = list(cmd.argv)
    assert argv[:4] == ["rclone", "mount", "s3vol:b/p", "/m"]
    assert "--daemon" in argv and "--read-only" in argv
    assert argv[argv.index("--vfs-cache-mode") + 1] == "full"
    assert argv[argv.index("--uid") + 1] == "7"
    config = cmd.files[WORK / "rclone.conf"]
    assert "secret_access_key = SK" in config and "endpoint = http://127.0.0.1:8333" in config
    assert "SK" not in " ".join(argv)
    assert cmd.rc_socket == WORK / "rc.sock"
