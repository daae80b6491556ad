"""The provisioner's pure planning: secret references, access modes, sizes, the PV body."""

import pytest

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.provisioner.plan import (
    PV_FINALIZER,
    ProvisioningError,
    capabilities,
    driver_parameters,
    pv_body,
    requested_bytes,
    secret_ref,
)

PARAMS = {
    "csi.storage.k8s.io/provisioner-secret-name": "s3-${pvc.namespace}",
    "csi.storage.k8s.io/provisioner-secret-namespace": "kube-system",
    "csi.storage.k8s.io/node-stage-secret-name": "s3-node",
    "csi.storage.k8s.io/node-stage-secret-namespace": "${pvc.namespace}",
    "bucket": "shared",
}
PVC = {
    "metadata": {"name": "data", "namespace": "team", "uid": "1234-abcd"},
    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "2Gi"}}},
}
SC = {"metadata": {"name": "s3"}, "parameters": PARAMS, "reclaimPolicy": "Retain"}


def test_secret_refs_expand_templates_and_need_both_halves() -> None:
    """${pvc.namespace} and friends expand; a name without a namespace is an error."""
    kw = {"pvc_name": "data", "pvc_namespace": "team", "pv_name": "pvc-1"}
    ref = secret_ref(PARAMS, "provisioner", **kw)
    assert ref is not None and (ref.name, ref.namespace) == ("s3-team", "kube-system")
    assert secret_ref(PARAMS, "node-publish", **kw) is None
    with pytest.raises(ProvisioningError):
        secret_ref({"csi.storage.k8s.io/provisioner-secret-name": "x"}, "provisioner", **kw)
    with pytest.raises(ProvisioningError):
        secret_ref(
            {
                "csi.storage.k8s.io/provisioner-secret-name": "${pod.name}",
                "csi.storage.k8s.io/provisioner-secret-namespace": "n",
            },
            "provisioner",
            **kw,
        )


def test_driver_parameters_drop_reserved_keys() -> None:
    """CreateVolume never sees csi.storage.k8s.io/* parameters."""
    assert driver_parameters(PARAMS) == {"bucket": "shared"}


def test_access_modes_and_sizes() -> None:
    """Kubernetes access modes map to CSI modes; quantities parse in binary and decimal units."""
    mode = csi_pb2.VolumeCapability.AccessMode
    assert [c.access_mode.mode for c in capabilities(["ReadWriteMany", "ReadOnlyMany"])] == [
        mode.MULTI_NODE_MULTI_WRITER, mode.MULTI_NODE_READER_ONLY,
    ]  # fmt: skip
    assert capabilities([])[0].access_mode.mode == mode.SINGLE_NODE_WRITER
    with pytest.raises(ProvisioningError):
        capabilities(["ReadWriteSometimes"])
    assert requested_bytes("2Gi") == 2 * 2**30
    assert requested_bytes("500M") == 500 * 10**6
    assert requested_bytes("1024") == 1024 and requested_bytes(None) == 0


def test_pv_body_is_prebound_with_csi_source_and_secret_refs() -> None:
    """The PV carries claimRef, volumeHandle, context, secret refs and our finalizer."""
    volume = csi_pb2.Volume(
        volume_id="shared/pvc-1234-abcd",
        capacity_bytes=2 * 2**30,
        volume_context={"layout": "prefix"},
    )
    pv = pv_body(pvc=PVC, storage_class=SC, driver_name="s3.csi.kubelet-py.io", volume=volume)
    meta, spec = pv["metadata"], pv["spec"]
    assert meta["name"] == "pvc-1234-abcd" and PV_FINALIZER in meta["finalizers"]
    assert meta["annotations"]["pv.kubernetes.io/provisioned-by"] == "s3.csi.kubelet-py.io"
    assert meta["annotations"]["volume.kubernetes.io/provisioner-deletion-secret-name"] == "s3-team"
    assert spec["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": "team",
        "name": "data",
        "uid": "1234-abcd",
    }
    assert spec["csi"]["volumeHandle"] == "shared/pvc-1234-abcd"
    assert spec["csi"]["nodeStageSecretRef"] == {"name": "s3-node", "namespace": "team"}
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"
    assert spec["accessModes"] == ["ReadWriteMany"] and spec["storageClassName"] == "s3"
    assert spec["capacity"]["storage"] == str(2 * 2**30)
