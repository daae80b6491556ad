"""The kopf provisioner: PVCs of our StorageClasses become CSI volumes and bound PVs.

    PVC (Pending, class with provisioner == ours, no PV yet)
        ─▶ read StorageClass + provisioner Secret ─▶ CreateVolume on the controller socket
        ─▶ create PV pvc-<uid> (claimRef, csi source, secret refs, finalizer); the
           cluster's PV controller binds the pair, as it does for upstream provisioners
    PV (ours, reclaimPolicy Delete, Released or being deleted)
        ─▶ DeleteVolume with the deletion Secret ─▶ drop our finalizer ─▶ delete the PV
    PV (ours, Retain, being deleted) ─▶ drop our finalizer

Level-triggered: a watch event reacts at once, and a timer per object retries what
failed, so a restart or a lost event converges. Failures are Events on the PVC
(ProvisioningFailed) or the PV (VolumeFailedDelete), posted once per distinct message.
Blocking Kubernetes calls run in threads; CSI calls use grpc.aio.
"""

import asyncio
import base64
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from csi_volumes.api.csi.v1 import csi_pb2, csi_pb2_grpc
from csi_volumes.provisioner.plan import (
    DELETION_SECRET_NAME,
    DELETION_SECRET_NAMESPACE,
    PROVISIONED_BY,
    PV_FINALIZER,
    ProvisioningError,
    capabilities,
    driver_parameters,
    pv_body,
    requested_bytes,
    secret_ref,
    volume_name,
)

log = logging.getLogger("csi_volumes.provisioner")
RETRY_INTERVAL_S = 10.0


@dataclass
class Provisioner:
    driver_name: str
    controller_socket: Path
    api: client.ApiClient
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _last_error: dict[str, str] = field(default_factory=dict)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    async def _secret(self, name: str, namespace: str) -> dict[str, str]:
        try:
            secret = await asyncio.to_thread(self.core.read_namespaced_secret, name, namespace)
        except ApiException as err:
            raise ProvisioningError(
                f"cannot read Secret {namespace}/{name}: {err.status} {err.reason}"
            ) from err
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    async def _controller(self) -> Any:
        return grpc.aio.insecure_channel(f"unix://{self.controller_socket}")

    def _report(self, body: Mapping[str, Any], key: str, reason: str, message: str) -> None:
        if self._last_error.get(key) != message:
            self._last_error[key] = message
            kopf.warn(body, reason=reason, message=message)  # type: ignore[arg-type]
        log.warning("%s %s: %s", reason, key, message)

    # -- provisioning --

    async def provision(self, pvc: Mapping[str, Any]) -> None:
        meta, spec = pvc["metadata"], pvc.get("spec", {})
        key = f"{meta['namespace']}/{meta['name']}"
        if spec.get("volumeName") or pvc.get("status", {}).get("phase") not in (None, "Pending"):
            return
        if meta.get("deletionTimestamp") or not spec.get("storageClassName"):
            return
        lock = self._locks.setdefault(meta["uid"], asyncio.Lock())
        async with lock:
            try:
                sc = await asyncio.to_thread(
                    client.StorageV1Api(self.api).read_storage_class, spec["storageClassName"]
                )
            except ApiException as err:
                if err.status == 404:
                    return
                raise
            if sc.provisioner != self.driver_name:
                return
            sc_dict = self.api.sanitize_for_serialization(sc)  # type: ignore[no-untyped-call]
            if (sc_dict.get("volumeBindingMode") == "WaitForFirstConsumer") and not meta.get(
                "annotations", {}
            ).get("volume.kubernetes.io/selected-node"):
                return  # the scheduler picks a node first
            name = volume_name(meta["uid"])
            try:
                await asyncio.to_thread(self.core.read_persistent_volume, name)
            except ApiException as err:
                if err.status != 404:
                    raise
            else:
                return  # provisioned already; the PV controller binds it
            try:
                await self._provision(pvc, sc_dict, name)
            except (ProvisioningError, grpc.RpcError) as err:
                message = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
                self._report(pvc, key, "ProvisioningFailed", f"{self.driver_name}: {message}")
                return
            self._last_error.pop(key, None)
            kopf.info(pvc, reason="ProvisioningSucceeded", message=f"provisioned volume {name}")  # type: ignore[arg-type]

    async def _provision(self, pvc: Mapping[str, Any], sc: Mapping[str, Any], name: str) -> None:
        meta, spec = pvc["metadata"], pvc["spec"]
        params = sc.get("parameters") or {}
        ref = secret_ref(
            params,
            "provisioner",
            pvc_name=meta["name"],
            pvc_namespace=meta["namespace"],
            pv_name=name,
        )
        secrets = await self._secret(ref.name, ref.namespace) if ref else {}
        request = csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(
                required_bytes=requested_bytes(
                    spec.get("resources", {}).get("requests", {}).get("storage")
                )
            ),
            volume_capabilities=capabilities(spec.get("accessModes") or []),
            parameters=driver_parameters(params),
            secrets=secrets,
        )
        async with await self._controller() as channel:
            stub = csi_pb2_grpc.ControllerStub(channel)
            response = await stub.CreateVolume(request, timeout=60)
        body = pv_body(
            pvc=pvc, storage_class=sc, driver_name=self.driver_name, volume=response.volume
        )
        try:
            await asyncio.to_thread(self.core.create_persistent_volume, body)  # type: ignore[arg-type]
        except ApiException as err:
            if err.status != 409:
                raise ProvisioningError(f"creating PV {name}: {err.status} {err.reason}") from err
        log.info("provisioned %s for %s/%s", name, meta["namespace"], meta["name"])

    # -- deletion --

    async def reclaim(self, pv: Mapping[str, Any]) -> None:
        meta, spec = pv["metadata"], pv.get("spec", {})
        if (meta.get("annotations") or {}).get(PROVISIONED_BY) != self.driver_name:
            return
        finalizers = list(meta.get("finalizers") or [])
        if PV_FINALIZER not in finalizers:
            return
        deleting = bool(meta.get("deletionTimestamp"))
        phase = pv.get("status", {}).get("phase")
        policy = spec.get("persistentVolumeReclaimPolicy", "Delete")
        if policy == "Delete" and (phase in ("Released", "Failed") or deleting):
            pass
        elif deleting:
            await self._drop_finalizer(meta["name"], finalizers)
            return
        else:
            return
        lock = self._locks.setdefault(meta["uid"], asyncio.Lock())
        async with lock:
            try:
                await self._delete_volume(pv)
            except (ProvisioningError, grpc.RpcError) as err:
                message = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
                self._report(pv, meta["name"], "VolumeFailedDelete", message)
                return
            await self._drop_finalizer(meta["name"], finalizers)
            if not deleting:
                try:
                    await asyncio.to_thread(self.core.delete_persistent_volume, meta["name"])
                except ApiException as err:
                    if err.status != 404:
                        raise
            log.info("deleted volume %s and its PV", spec["csi"]["volumeHandle"])

    async def _delete_volume(self, pv: Mapping[str, Any]) -> None:
        annotations = pv["metadata"].get("annotations") or {}
        secrets: dict[str, str] = {}
        if annotations.get(DELETION_SECRET_NAME):
            secrets = await self._secret(
                annotations[DELETION_SECRET_NAME], annotations.get(DELETION_SECRET_NAMESPACE, "")
            )
        async with await self._controller() as channel:
            stub = csi_pb2_grpc.ControllerStub(channel)
            await stub.DeleteVolume(
                csi_pb2.DeleteVolumeRequest(
                    volume_id=pv["spec"]["csi"]["volumeHandle"], secrets=secrets
                ),
                timeout=120,
            )

    async def _drop_finalizer(self, name: str, finalizers: list[str]) -> None:
        patch = [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {
                "op": "replace",
                "path": "/metadata/finalizers",
                "value": [f for f in finalizers if f != PV_FINALIZER],
            },
        ]
        try:
            await asyncio.to_thread(self.core.patch_persistent_volume, name, patch)
        except ApiException as err:
            if err.status not in (404, 422):  # gone, or changed under us: the timer retries
                raise


def build_registry(prov: Provisioner, kubeconfig: Path | None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        if kubeconfig is not None:
            os.environ["KUBECONFIG"] = str(kubeconfig)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 60

    @kopf.on.event("persistentvolumeclaims", registry=registry)
    async def pvc_event(body: Any, type: str | None, **_: Any) -> None:
        if type != "DELETED":
            await prov.provision(body)

    @kopf.timer("persistentvolumeclaims", interval=RETRY_INTERVAL_S, registry=registry)
    async def pvc_retry(body: Any, **_: Any) -> None:
        await prov.provision(body)

    @kopf.on.event("persistentvolumes", registry=registry)
    async def pv_event(body: Any, type: str | None, **_: Any) -> None:
        if type != "DELETED":
            await prov.reclaim(body)

    @kopf.timer("persistentvolumes", interval=RETRY_INTERVAL_S, registry=registry)
    async def pv_retry(body: Any, **_: Any) -> None:
        await prov.reclaim(body)

    return registry


def run_provisioner(
    *,
    kubeconfig: Path | None,
    controller_socket: Path,
    driver_name: str,
    namespaces: tuple[str, ...] = (),
) -> int:
    if kubeconfig is not None:
        api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
    prov = Provisioner(driver_name=driver_name, controller_socket=controller_socket, api=api)
    registry = build_registry(prov, kubeconfig)
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
        )
    )
    return 0
