"""The exception tree of the image service, in one place.

Every error names the image (or blob) and the cause. `temporary` tells a caller
whether retrying the same request may succeed (a registry 500, a dropped
connection) or not (a digest mismatch, an unknown manifest, a 404).
"""


class ImageError(Exception):
    """Base of every image-service error."""

    temporary = False


class InvalidReferenceError(ImageError):
    """An image reference that cannot be parsed."""


class ImageNotFoundError(ImageError):
    """No such image in the local store."""


class ImageInUseError(ImageError):
    """The image backs a container and cannot be removed now."""


class PullError(ImageError):
    """Pulling an image failed; subclasses say why."""


class RegistryUnreachableError(PullError):
    """No connection to the registry (refused, DNS, TLS handshake, timeout)."""

    temporary = True


class RegistryServerError(PullError):
    """The registry answered 5xx."""

    temporary = True


class AuthenticationError(PullError):
    """The registry refused our credentials, or wanted some and we had none (401/403)."""


class ManifestUnknownError(PullError):
    """The registry has no such tag or digest (404)."""


class UnsupportedMediaTypeError(PullError):
    """A manifest or layer media type we do not understand."""


class NoMatchingPlatformError(PullError):
    """An image index without a manifest for this platform."""


class DigestMismatchError(PullError):
    """Content whose sha256 or size is not what its descriptor promised."""


class IncompleteDownloadError(PullError):
    """The connection ended before the whole blob arrived; the next pull resumes it."""

    temporary = True


class BlobUnknownError(PullError):
    """The registry has no blob with a digest the manifest names (404)."""


class LayerUnpackError(PullError):
    """A layer tar that is corrupt or unsafe (path traversal, link escaping the layer)."""


class ImportError_(ImageError):
    """An image archive or layout that cannot be imported."""
