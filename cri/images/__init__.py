"""The image half of the runtime: pull OCI images into a content store and overlay2 layers.

Public surface: `ImageService` (pull, list, find, remove, fs_info, garbage_collect,
lowerdirs, config), the registry configuration, credentials helpers, the typed
image config with its command rules, and the error tree.
"""

from cri.images.auth import Credentials, parse_dockerconfigjson
from cri.images.config import ImageConfig, NoCommandError, parse_image_config, resolve_command
from cri.images.errors import (
    AuthenticationError,
    BlobUnknownError,
    DigestMismatchError,
    ImageError,
    ImageInUseError,
    ImageNotFoundError,
    IncompleteDownloadError,
    InvalidReferenceError,
    LayerUnpackError,
    ManifestUnknownError,
    NoMatchingPlatformError,
    PullError,
    RegistryServerError,
    RegistryUnreachableError,
    UnsupportedMediaTypeError,
)
from cri.images.manifest import Platform, host_platform
from cri.images.records import ImageRecord
from cri.images.reference import ImageReference, parse_reference
from cri.images.registry import RegistryConfig, RegistryHost
from cri.images.service import FsUsage, GCResult, ImageService, PullEvent

__all__ = [
    "AuthenticationError",
    "BlobUnknownError",
    "Credentials",
    "DigestMismatchError",
    "FsUsage",
    "GCResult",
    "ImageConfig",
    "ImageError",
    "ImageInUseError",
    "ImageNotFoundError",
    "ImageRecord",
    "ImageReference",
    "ImageService",
    "IncompleteDownloadError",
    "InvalidReferenceError",
    "LayerUnpackError",
    "ManifestUnknownError",
    "NoCommandError",
    "NoMatchingPlatformError",
    "Platform",
    "PullError",
    "PullEvent",
    "RegistryConfig",
    "RegistryHost",
    "RegistryServerError",
    "RegistryUnreachableError",
    "UnsupportedMediaTypeError",
    "host_platform",
    "parse_dockerconfigjson",
    "parse_image_config",
    "parse_reference",
    "resolve_command",
]
