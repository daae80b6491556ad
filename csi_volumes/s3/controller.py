"""The CSI Controller service of the S3 driver: a bucket or a prefix per volume.

CreateVolume plans the volume from the StorageClass parameters (`params.plan_volume`,
pure), then makes it with the credentials in the CO's provisioner secrets: a bucket for
`layout=bucket` (the default), or a directory object `<prefix>/` inside the configured
bucket for `layout=prefix`. The same name always maps to the same volume id, so a
repeated CreateVolume is idempotent; a bucket volume carries a tag with a fingerprint of
its parameters, so a repeat with other parameters is ALREADY_EXISTS (a prefix volume's
directory object keeps no metadata on SeaweedFS, so there it is not detected).
DeleteVolume removes every object (and the bucket); a volume already gone is success, as
the spec asks.
"""

import asyncio
import hashlib
import json
import logging

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.errors import Code, CsiCallError, invalid_argument, not_found
from csi_volumes.s3.capabilities import check_capabilities, unsupported_reason
from csi_volumes.s3.params import Layout, parse_credentials, parse_volume_id, plan_volume
from csi_volumes.s3.store import S3Store

log = logging.getLogger("csi_volumes.s3.controller")

#: bucket tag holding a fingerprint of the parameters a bucket volume was created with
CONTEXT_TAG = "kubelet-py.csi/parameters"


def context_fingerprint(context: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:32]


class S3Controller:
    async def create_volume(self, req: csi_pb2.CreateVolumeRequest) -> csi_pb2.CreateVolumeResponse:
        if not req.name:
            raise invalid_argument("CreateVolume: name is required")
        check_capabilities(req.volume_capabilities, call="CreateVolume")
        if req.HasField("volume_content_source"):
            raise invalid_argument(
                "CreateVolume: volume_content_source (snapshots, clones) is not supported"
            )
        cap = req.capacity_range
        if cap.limit_bytes and cap.required_bytes > cap.limit_bytes:
            raise CsiCallError(
                Code.OUT_OF_RANGE,
                f"CreateVolume: required_bytes {cap.required_bytes} "
                f"> limit_bytes {cap.limit_bytes}",
            )
        plan = plan_volume(req.name, dict(req.parameters))
        store = S3Store(parse_credentials(dict(req.secrets), call="CreateVolume"))
        ref = plan.ref
        if ref.layout is Layout.BUCKET:
            await self._create_bucket_volume(store, ref.bucket, plan.context, req.name)
        else:
            if not await asyncio.to_thread(store.bucket_exists, ref.bucket):
                raise invalid_argument(
                    f"CreateVolume: the StorageClass's bucket {ref.bucket} does not exist "
                    f"at {store.creds.endpoint}"
                )
            await asyncio.to_thread(store.put_marker, ref)
        log.info("created volume %s for %s (%s)", ref.volume_id, req.name, ref.layout.value)
        return csi_pb2.CreateVolumeResponse(
            volume=csi_pb2.Volume(
                volume_id=ref.volume_id,
                # S3 has no size; report what was asked so the CO's bookkeeping matches
                capacity_bytes=cap.required_bytes or cap.limit_bytes,
                volume_context=plan.context,
            )
        )

    async def _create_bucket_volume(
        self, store: S3Store, bucket: str, context: dict[str, str], name: str
    ) -> None:
        """Make the bucket, tagged with a fingerprint of the volume's parameters, so a
        repeated CreateVolume with other parameters is ALREADY_EXISTS, as the spec asks."""
        fingerprint = context_fingerprint(context)
        created = await asyncio.to_thread(store.create_bucket, bucket)
        if not created:
            existing = await asyncio.to_thread(store.bucket_tag, bucket, CONTEXT_TAG)
            if existing is not None and existing != fingerprint:
                raise CsiCallError(
                    Code.ALREADY_EXISTS,
                    f"CreateVolume: volume {name} (bucket {bucket}) already exists "
                    "with other parameters",
                )
            if existing == fingerprint:
                return
        await asyncio.to_thread(store.set_bucket_tag, bucket, CONTEXT_TAG, fingerprint)

    async def delete_volume(self, req: csi_pb2.DeleteVolumeRequest) -> csi_pb2.DeleteVolumeResponse:
        if not req.volume_id:
            raise invalid_argument("DeleteVolume: volume_id is required")
        try:
            ref = parse_volume_id(req.volume_id)
        except CsiCallError as err:
            if err.code is Code.NOT_FOUND:  # never ours, so nothing to delete
                return csi_pb2.DeleteVolumeResponse()
            raise
        store = S3Store(parse_credentials(dict(req.secrets), call="DeleteVolume"))
        deleted = await asyncio.to_thread(store.delete_volume, ref)
        log.info("deleted volume %s (%d objects)", ref.volume_id, deleted)
        return csi_pb2.DeleteVolumeResponse()

    async def validate(
        self, req: csi_pb2.ValidateVolumeCapabilitiesRequest
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        if not req.volume_id:
            raise invalid_argument("ValidateVolumeCapabilities: volume_id is required")
        if not req.volume_capabilities:
            raise invalid_argument("ValidateVolumeCapabilities: volume_capabilities is required")
        ref = parse_volume_id(req.volume_id)
        store = S3Store(parse_credentials(dict(req.secrets), call="ValidateVolumeCapabilities"))
        if not await asyncio.to_thread(store.exists, ref):
            raise not_found(f"volume {ref.volume_id} does not exist at {store.creds.endpoint}")
        reasons = [r for r in (unsupported_reason(c) for c in req.volume_capabilities) if r]
        if reasons:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message="; ".join(reasons))
        return csi_pb2.ValidateVolumeCapabilitiesResponse(
            confirmed=csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=req.volume_context,
                volume_capabilities=req.volume_capabilities,
                parameters=req.parameters,
            )
        )

    def capabilities(self) -> csi_pb2.ControllerGetCapabilitiesResponse:
        rpc = csi_pb2.ControllerServiceCapability.RPC
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.ControllerServiceCapability(rpc=rpc(type=rpc.CREATE_DELETE_VOLUME))
            ]
        )
