"""S3 volumes through our CSI driver vs s3fs-fuse mounted by hand vs rclone, one SeaweedFS.

    python3 bench/csi_s3.py                       # 1 GiB file, 2,000 small files
    python3 bench/csi_s3.py --size-mb 256 --small-files 500 --runs 3

For each variant, on a fresh bucket of the same local SeaweedFS (`weed server -s3`):
sequential write of one large file (1 MiB writes, timed through close, when s3fs and
rclone finish uploading), a cold sequential read of it through a fresh mount (the page
cache of the writing mount cannot help), and a copy of many 4 KiB files into the mount.

    ours    kubelet-py-csi s3: CreateVolume, NodeStage (s3fs), NodePublish (bind) over gRPC
    s3fs    s3fs by hand, with exactly the options our driver passes (the anchor)
    rclone  rclone mount by hand, VFS cache off (the driver's rclone default)

The target (issue 8): ours within 10 % of s3fs by hand, since the driver adds only a bind
mount. Root only; everything lives in a temp dir, removed at the end with its mounts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from csi_volumes.api.csi.v1 import csi_pb2, csi_pb2_grpc  # noqa: E402
from csi_volumes.mountinfo import mounts  # noqa: E402
from csi_volumes.s3 import mountops  # noqa: E402
from csi_volumes.s3.mounters import mount_command  # noqa: E402
from csi_volumes.s3.params import (  # noqa: E402
    Mounter,
    MountOptions,
    VolumeRef,
    parse_credentials,
)
from csi_volumes.s3.store import S3Store  # noqa: E402
from tests.support.seaweedfs import SeaweedS3  # noqa: E402

CHUNK = 1 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Variant:
    """A way to mount a bucket: mount(bucket) -> path, unmount(path)."""

    def __init__(
        self, name: str, mount: Callable[[str, Path], Path], unmount: Callable[[Path], None]
    ) -> None:
        self.name, self.mount, self.unmount = name, mount, unmount


def by_hand(mounter: Mounter, s3: SeaweedS3, root: Path) -> Variant:
    creds = parse_credentials(s3.secrets(), call="bench")

    def mount(bucket: str, where: Path) -> Path:
        work = root / f"work-{where.name}"
        work.mkdir(parents=True, exist_ok=True)
        where.mkdir(parents=True, exist_ok=True)
        cmd = mount_command(
            ref=VolumeRef(bucket),
            creds=creds,
            options=MountOptions(mounter=mounter),
            mountpoint=where,
            work_dir=work,
        )
        for path, text in cmd.files.items():
            path.write_text(text)
            path.chmod(0o600)
        mountops.run_mounter(cmd, where, work / "launcher.log")
        return where

    def unmount(path: Path) -> None:
        mountops.unmount_fuse(path, rc_socket=root / f"work-{path.name}" / "rc.sock")

    return Variant(mounter.value, mount, unmount)


class OurDriver:
    def __init__(self, s3: SeaweedS3, root: Path) -> None:
        self.s3, self.root = s3, root
        self.socket = root / "csi.sock"
        self.log = (root / "driver.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "csi_volumes.cli", "s3", "--endpoint", f"unix://{self.socket}",
             "--node-id", "bench", "--state-dir", str(root / "state")],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the driver did not start; see driver.log")
            time.sleep(0.1)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.cap = csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER
            ),
        )
        self.volumes: dict[Path, csi_pb2.Volume] = {}

    def variant(self) -> Variant:
        def mount(bucket: str, where: Path) -> Path:
            vol = self.controller.CreateVolume(
                csi_pb2.CreateVolumeRequest(
                    name=bucket, volume_capabilities=[self.cap], secrets=self.s3.secrets()
                )
            ).volume
            staging = where.with_name(where.name + "-staging")
            staging.mkdir(parents=True, exist_ok=True)
            self.node.NodeStageVolume(
                csi_pb2.NodeStageVolumeRequest(
                    volume_id=vol.volume_id, staging_target_path=str(staging),
                    volume_capability=self.cap, secrets=self.s3.secrets(),
                    volume_context=vol.volume_context,
                ),
                timeout=120,
            )  # fmt: skip
            self.node.NodePublishVolume(
                csi_pb2.NodePublishVolumeRequest(
                    volume_id=vol.volume_id, staging_target_path=str(staging),
                    target_path=str(where), volume_capability=self.cap,
                ),
                timeout=120,
            )  # fmt: skip
            self.volumes[where] = vol
            return where

        def unmount(path: Path) -> None:
            vol = self.volumes.pop(path)
            self.node.NodeUnpublishVolume(
                csi_pb2.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(path)),
                timeout=300,
            )
            self.node.NodeUnstageVolume(
                csi_pb2.NodeUnstageVolumeRequest(
                    volume_id=vol.volume_id, staging_target_path=str(path) + "-staging"
                ),
                timeout=300,
            )

        return Variant("ours", mount, unmount)

    def stop(self) -> None:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def write_file(path: Path, size_mb: int) -> float:
    block = os.urandom(CHUNK)
    start = time.perf_counter()
    with path.open("wb") as out:
        for _ in range(size_mb):
            out.write(block)
    return time.perf_counter() - start  # close() returns once the upload is done


def read_file(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    with path.open("rb", buffering=0) as src:
        while chunk := src.read(CHUNK):
            total += len(chunk)
    return time.perf_counter() - start, total


def copy_small(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    target = dst / "small"
    target.mkdir()
    for f in sorted(src.iterdir()):
        shutil.copyfile(f, target / f.name)  # like cp without -p
    return time.perf_counter() - start


def run_variant(
    v: Variant, s3: SeaweedS3, root: Path, run: int, size_mb: int, small_src: Path
) -> dict[str, float]:
    bucket = f"bench-{v.name}-{run}-{os.getpid()}"
    if v.name != "ours":
        s3.client().create_bucket(Bucket=bucket)
    where = root / f"mnt-{v.name}-{run}"
    v.mount(bucket, where)
    try:
        w = write_file(where / "big.bin", size_mb)
        s = copy_small(small_src, where)
    finally:
        v.unmount(where)
    v.mount(bucket, where)  # a fresh mount: the read comes from S3, not the page cache
    try:
        r, total = read_file(where / "big.bin")
        if total != size_mb * CHUNK:
            raise RuntimeError(f"{v.name}: read {total} bytes, wrote {size_mb * CHUNK}")
    finally:
        v.unmount(where)
        # SeaweedFS gives every bucket volumes of its own: free them, or later runs run out
        S3Store(parse_credentials(s3.secrets(), call="bench")).delete_volume(VolumeRef(bucket))
    return {"write": size_mb / w, "read": size_mb / r, "small": s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-rclone", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        log("bench/csi_s3.py: run as root (FUSE mounts)")
        return 1
    root = Path(tempfile.mkdtemp(prefix="kpy-csi-bench-"))
    s3 = SeaweedS3(root / "seaweed")
    driver: OurDriver | None = None
    try:
        log(f"starting SeaweedFS in {root}")
        s3.start()
        small = root / "small-src"
        small.mkdir()
        for i in range(args.small_files):
            (small / f"f{i:05d}.txt").write_bytes(os.urandom(4096))
        driver = OurDriver(s3, root)
        variants = [driver.variant(), by_hand(Mounter.S3FS, s3, root)]
        if not args.no_rclone:
            variants.append(by_hand(Mounter.RCLONE, s3, root))
        results: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
        for run in range(args.runs):
            # rotate the order each run, so warm-up and drift hit every variant alike
            for v in variants[run % len(variants) :] + variants[: run % len(variants)]:
                log(f"run {run + 1}/{args.runs}: {v.name}")
                r = run_variant(v, s3, root, run, args.size_mb, small)
                log(
                    f"  write {r['write']:.1f} MiB/s, read {r['read']:.1f} MiB/s, "
                    f"small files {r['small']:.1f} s"
                )
                results[v.name].append(r)
        med = {
            name: {k: statistics.median(r[k] for r in rs) for k in ("write", "read", "small")}
            for name, rs in results.items()
        }
        anchor = med["s3fs"]
        print(
            f"\n{args.size_mb} MiB file, {args.small_files} x 4 KiB files, "
            f"median of {args.runs} run(s), SeaweedFS on loopback\n"
        )
        print(
            f"| variant | write MiB/s | read MiB/s | {args.small_files} small files s | vs s3fs |"
        )
        print("| --- | --- | --- | --- | --- |")
        for name, m in med.items():
            ratio = (
                f"write {m['write'] / anchor['write']:.0%}, read {m['read'] / anchor['read']:.0%}, "
                f"small {anchor['small'] / m['small']:.0%}"
            )
            print(f"| {name} | {m['write']:.1f} | {m['read']:.1f} | {m['small']:.1f} | {ratio} |")
        ours = med["ours"]
        within = all(
            (ours[k] >= 0.9 * anchor[k]) if k != "small" else (ours[k] <= 1.1 * anchor[k])
            for k in ("write", "read", "small")
        )
        print(f"\nours within 10 % of s3fs by hand: {'yes' if within else 'no'}")
        return 0
    finally:
        if driver is not None:
            driver.stop()
        prefix = str(root) + "/"
        for _ in range(32):
            ours_m = [m.mountpoint for m in mounts() if m.mountpoint.startswith(prefix)]
            if not ours_m:
                break
            subprocess.run(["umount", "-l", ours_m[-1]], check=False)
        s3.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


if __name__ == "__main__":
    sys.exit(main())
