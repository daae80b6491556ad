"""`runtime.v1.ImageService` over `cri.images.ImageService`.

Error mapping (the message always names the image and the cause, as kubelets
show it in ErrImagePull events):

    InvalidReferenceError            -> INVALID_ARGUMENT
    ImageNotFound / ManifestUnknown  -> NOT_FOUND
    AuthenticationError              -> PERMISSION_DENIED
    ImageInUseError                  -> FAILED_PRECONDITION
    temporary errors (5xx, network)  -> UNAVAILABLE
    anything else of ImageError      -> UNKNOWN
"""

import base64
import json
import time
from typing import Any

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from cri.images import (
    AuthenticationError,
    Credentials,
    ImageError,
    ImageInUseError,
    ImageNotFoundError,
    ImageRecord,
    ImageService,
    InvalidReferenceError,
    ManifestUnknownError,
)


def _code_for(err: ImageError) -> grpc.StatusCode:
    if isinstance(err, InvalidReferenceError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, ImageNotFoundError | ManifestUnknownError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, AuthenticationError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(err, ImageInUseError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if err.temporary:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.UNKNOWN


def image_message(record: ImageRecord) -> Any:
    """An `Image` message: numeric USER goes in uid, a name in username (as containerd does)."""
    msg = api_pb2.Image(
        id=record.id,
        repo_tags=list(record.repo_tags),
        repo_digests=list(record.repo_digests),
        size=record.size_bytes,
        spec=api_pb2.ImageSpec(image=record.id),
    )
    user = record.user.split(":", 1)[0]
    if user.isdigit():
        msg.uid.value = int(user)
    elif user:
        msg.username = user
    return msg


def credentials_from(auth: Any) -> Credentials | None:
    if auth is None or not auth.ByteSize():
        return None
    if auth.auth and not (auth.username or auth.password):
        user, _, password = base64.b64decode(auth.auth).decode().partition(":")
        return Credentials(username=user, password=password)
    return Credentials(
        username=auth.username,
        password=auth.password,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )


class ImageServiceServicer(api_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: ImageService) -> None:
        self.images = images

    async def ListImages(self, request: Any, context: Any) -> Any:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        records = self.images.list_images()
        if wanted:
            found = self.images.find(wanted)
            records = [found] if found is not None else []
        return api_pb2.ListImagesResponse(images=[image_message(r) for r in records])

    async def ImageStatus(self, request: Any, context: Any) -> Any:
        record = self.images.find(request.image.image)
        if record is None:
            return api_pb2.ImageStatusResponse()  # CRI: absent image is not an error
        info = {}
        if request.verbose:
            # Shaped like containerd's verbose image info, which tools already read.
            info["info"] = json.dumps(
                {
                    "chainID": record.chain_ids[-1] if record.chain_ids else "",
                    "imageSpec": json.loads(self.images.content.read(record.id)),
                    "manifestDigest": record.manifest_digest,
                    "unpackedBytes": record.unpacked_bytes,
                    "lastUsed": record.last_used,
                }
            )
        return api_pb2.ImageStatusResponse(image=image_message(record), info=info)

    async def PullImage(self, request: Any, context: Any) -> Any:
        try:
            record = await self.images.pull(
                request.image.image,
                credentials=credentials_from(request.auth if request.HasField("auth") else None),
            )
        except ImageError as err:
            await context.abort(_code_for(err), str(err))
            raise AssertionError("abort returned") from err
        return api_pb2.PullImageResponse(image_ref=record.id)

    async def RemoveImage(self, request: Any, context: Any) -> Any:
        try:
            self.images.remove(request.image.image)
        except ImageError as err:
            await context.abort(_code_for(err), str(err))
        return api_pb2.RemoveImageResponse()

    async def ImageFsInfo(self, request: Any, context: Any) -> Any:
        usage = self.images.fs_info()
        fs = api_pb2.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=str(usage.mountpoint)),
        )
        fs.used_bytes.value = usage.used_bytes
        fs.inodes_used.value = usage.inodes_used
        return api_pb2.ImageFsInfoResponse(image_filesystems=[fs])
