"""The kopf provisioner against the real control plane, the real driver and SeaweedFS."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from kubelet_py.devcluster import LocalCluster
from tests.integration.csi.conftest import REPO, Driver
from tests.support.seaweedfs import SeaweedS3

DRIVER = "s3.csi.kubelet-py.io"


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def provisioner(
    cluster: LocalCluster, make_driver: Callable[..., Driver], csi_root: Path
) -> Iterator[Path]:
    """A controller-side driver and `kubelet-py-csi provisioner` against the cluster."""
    driver = make_driver("controller")
    log_path = csi_root / "provisioner.log"
    argv = [
        sys.executable, "-m", "csi_volumes.cli", "provisioner",
        "--kubeconfig", str(cluster.admin_kubeconfig),
        "--controller-endpoint", f"unix://{driver.socket}",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
    try:
        yield log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def namespace(admin_api: client.ApiClient) -> Iterator[str]:
    """A unique namespace, deleted after the test."""
    name = f"csi-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


def make_class(
    admin_api: client.ApiClient, namespace: str, secrets: dict[str, str], **params: str
) -> str:
    core = client.CoreV1Api(admin_api)
    secret = f"s3-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data=secrets),
    )
    name = f"s3-{uuid.uuid4().hex[:8]}"
    client.StorageV1Api(admin_api).create_storage_class(
        client.V1StorageClass(
            metadata=client.V1ObjectMeta(name=name),
            provisioner=DRIVER,
            reclaim_policy="Delete",
            volume_binding_mode="Immediate",
            parameters={
                "csi.storage.k8s.io/provisioner-secret-name": secret,
                "csi.storage.k8s.io/provisioner-secret-namespace": namespace,
                "csi.storage.k8s.io/node-stage-secret-name": secret,
                "csi.storage.k8s.io/node-stage-secret-namespace": namespace,
                **params,
            },
        )
    )
    return name


def make_claim(admin_api: client.ApiClient, namespace: str, storage_class: str) -> str:
    name = f"data-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(admin_api).create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"],
                storage_class_name=storage_class,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    return name


def buckets(seaweed: SeaweedS3) -> list[str]:
    return [b["Name"] for b in seaweed.client().list_buckets()["Buckets"]]


def test_claim_is_provisioned_bound_and_deleted_with_its_bucket(
    seaweed: SeaweedS3, admin_api: client.ApiClient, namespace: str, provisioner: Path
) -> None:
    """PVC → CreateVolume → PV bound; PVC deleted → DeleteVolume, bucket and PV gone."""
    core = client.CoreV1Api(admin_api)
    sc = make_class(admin_api, namespace, seaweed.secrets())
    claim = make_claim(admin_api, namespace, sc)

    def bound() -> client.V1PersistentVolumeClaim | None:
        pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
        return pvc if pvc.status.phase == "Bound" else None

    pvc = wait_for(bound, 90, f"{claim} to be Bound ({provisioner})")
    assert isinstance(pvc, client.V1PersistentVolumeClaim)
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    assert pv.spec.csi.driver == DRIVER
    assert pv.spec.csi.node_stage_secret_ref.namespace == namespace
    assert pv.metadata.annotations["pv.kubernetes.io/provisioned-by"] == DRIVER
    bucket = pv.spec.csi.volume_handle
    assert bucket in buckets(seaweed)
    seaweed.client().put_object(Bucket=bucket, Key="file.txt", Body=b"data")

    core.delete_namespaced_persistent_volume_claim(claim, namespace)

    def pv_gone() -> bool:
        try:
            core.read_persistent_volume(pv.metadata.name)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(pv_gone, 90, f"PV {pv.metadata.name} to be deleted")
    assert bucket not in buckets(seaweed)


def test_bad_secret_is_an_event_on_the_claim(
    seaweed: SeaweedS3, admin_api: client.ApiClient, namespace: str, provisioner: Path
) -> None:
    """A StorageClass secret with a wrong key: ProvisioningFailed on the PVC with S3's error."""
    core = client.CoreV1Api(admin_api)
    sc = make_class(admin_api, namespace, seaweed.secrets(secret_key="not-the-key"))
    claim = make_claim(admin_api, namespace, sc)

    def failure_event() -> list[client.CoreV1Event]:
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={claim}"
        ).items
        return [e for e in events if e.reason == "ProvisioningFailed"]

    events = wait_for(failure_event, 90, f"a ProvisioningFailed event on {claim} ({provisioner})")
    assert isinstance(events, list)
    assert "SignatureDoesNotMatch" in events[0].message
    assert events[0].type == "Warning"
    pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    assert pvc.status.phase == "Pending"
