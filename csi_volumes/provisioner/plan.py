"""Pure planning for the provisioner: PVC + StorageClass -> CreateVolume request -> PV.

Follows the external-provisioner conventions so clusters read our PVs as they read
upstream's: volume name `pvc-<claim uid>`, secret references from the StorageClass's
`csi.storage.k8s.io/*-secret-name|namespace` parameters (with `${pvc.name}`,
`${pvc.namespace}`, `${pv.name}` templates), those parameters stripped before
CreateVolume, `pv.kubernetes.io/provisioned-by`, deletion-secret annotations, and a
finalizer that holds the PV until its backing volume is deleted.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.errors import CsiVolumesError

PREFIX = "csi.storage.k8s.io/"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
DELETION_SECRET_NAME = "volume.kubernetes.io/provisioner-deletion-secret-name"  # noqa: S105 - an annotation key
DELETION_SECRET_NAMESPACE = "volume.kubernetes.io/provisioner-deletion-secret-namespace"  # noqa: S105
PV_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"

_Mode = csi_pb2.VolumeCapability.AccessMode
ACCESS_MODES = {
    "ReadWriteOnce": _Mode.SINGLE_NODE_WRITER,
    "ReadOnlyMany": _Mode.MULTI_NODE_READER_ONLY,
    "ReadWriteMany": _Mode.MULTI_NODE_MULTI_WRITER,
    "ReadWriteOncePod": _Mode.SINGLE_NODE_SINGLE_WRITER,
}


class ProvisioningError(CsiVolumesError):
    """The claim cannot be provisioned as asked (a bad StorageClass or claim)."""


@dataclass(frozen=True)
class SecretRef:
    name: str
    namespace: str


def _expand(template: str, *, pvc_name: str, pvc_namespace: str, pv_name: str) -> str:
    out = (
        template.replace("${pvc.name}", pvc_name)
        .replace("${pvc.namespace}", pvc_namespace)
        .replace("${pv.name}", pv_name)
    )
    if "${" in out:
        raise ProvisioningError(f"unknown template in StorageClass secret parameter {template!r}")
    return out


def secret_ref(
    parameters: Mapping[str, str], kind: str, *, pvc_name: str, pvc_namespace: str, pv_name: str
) -> SecretRef | None:
    """The `kind` secret (provisioner, node-stage, node-publish, ...) of a StorageClass."""
    name = parameters.get(f"{PREFIX}{kind}-secret-name")
    namespace = parameters.get(f"{PREFIX}{kind}-secret-namespace")
    if name is None and namespace is None:
        return None
    if not name or not namespace:
        raise ProvisioningError(
            f"StorageClass sets only one of {PREFIX}{kind}-secret-name / -namespace"
        )
    kw = {"pvc_name": pvc_name, "pvc_namespace": pvc_namespace, "pv_name": pv_name}
    return SecretRef(name=_expand(name, **kw), namespace=_expand(namespace, **kw))


def driver_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """What CreateVolume gets: the StorageClass parameters without the reserved ones."""
    return {k: v for k, v in parameters.items() if not k.startswith(PREFIX)}


def volume_name(pvc_uid: str) -> str:
    return f"pvc-{pvc_uid}"


def capabilities(access_modes: list[str]) -> list[csi_pb2.VolumeCapability]:
    caps = []
    for mode in access_modes or ["ReadWriteOnce"]:
        if mode not in ACCESS_MODES:
            raise ProvisioningError(f"unknown access mode {mode!r} on the claim")
        caps.append(
            csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(),
                access_mode=csi_pb2.VolumeCapability.AccessMode(mode=ACCESS_MODES[mode]),
            )
        )
    return caps


def requested_bytes(quantity: str | None) -> int:
    """A Kubernetes quantity (1Gi, 500M, 1073741824) in bytes."""
    if not quantity:
        return 0
    units = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
        "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    }  # fmt: skip
    for suffix in sorted(units, key=len, reverse=True):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * units[suffix])
    try:
        return int(float(quantity))
    except ValueError:
        raise ProvisioningError(f"claim requests an unreadable size {quantity!r}") from None


def pv_body(
    *,
    pvc: Mapping[str, Any],
    storage_class: Mapping[str, Any],
    driver_name: str,
    volume: csi_pb2.Volume,
) -> dict[str, Any]:
    """The PersistentVolume for a provisioned claim, pre-bound to it by claimRef."""
    meta, spec = pvc["metadata"], pvc["spec"]
    name = volume_name(meta["uid"])
    params = storage_class.get("parameters") or {}
    kw = {"pvc_name": meta["name"], "pvc_namespace": meta["namespace"], "pv_name": name}
    csi: dict[str, Any] = {
        "driver": driver_name,
        "volumeHandle": volume.volume_id,
        "volumeAttributes": dict(volume.volume_context),
    }
    for kind, field in (
        ("node-stage", "nodeStageSecretRef"),
        ("node-publish", "nodePublishSecretRef"),
        ("controller-publish", "controllerPublishSecretRef"),
        ("controller-expand", "controllerExpandSecretRef"),
    ):
        ref = secret_ref(params, kind, **kw)
        if ref is not None:
            csi[field] = {"name": ref.name, "namespace": ref.namespace}
    annotations = {PROVISIONED_BY: driver_name}
    deletion = secret_ref(params, "provisioner", **kw)
    if deletion is not None:
        annotations[DELETION_SECRET_NAME] = deletion.name
        annotations[DELETION_SECRET_NAMESPACE] = deletion.namespace
    requested = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": annotations, "finalizers": [PV_FINALIZER]},
        "spec": {
            "capacity": {
                "storage": str(volume.capacity_bytes) if volume.capacity_bytes else requested
            },
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
            "storageClassName": storage_class["metadata"]["name"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "csi": csi,
        },
    }
    if storage_class.get("mountOptions"):
        body["spec"]["mountOptions"] = list(storage_class["mountOptions"])
    return body
