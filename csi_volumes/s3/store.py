"""The S3 operations the controller and the node's pre-mount check need (boto3, in threads).

Each method is blocking; callers run it through `asyncio.to_thread`. S3 failures become
`S3Error`s carrying the server's error code and message, mapped to the CSI status the
spec asks for (an unknown access key is UNAUTHENTICATED, a refused one PERMISSION_DENIED,
a missing bucket NOT_FOUND, an unreachable server UNAVAILABLE).
"""

from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from csi_volumes.errors import Code, S3Error
from csi_volumes.s3.params import Credentials, VolumeRef

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_DENIED_CODES = {"AccessDenied", "Forbidden", "403"}
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


def _status_for(s3_code: str) -> Code:
    if s3_code in _AUTH_CODES:
        return Code.UNAUTHENTICATED
    if s3_code in _DENIED_CODES:
        return Code.PERMISSION_DENIED
    if s3_code in _MISSING_CODES:
        return Code.NOT_FOUND
    return Code.INTERNAL


class S3Store:
    """One endpoint with one set of credentials."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=creds.endpoint,
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            region_name=creds.region,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    def _call(self, what: str, target: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except botocore.exceptions.ClientError as err:
            error = err.response.get("Error", {})
            s3_code = str(error.get("Code", "Unknown"))
            message = error.get("Message") or err.response.get("ResponseMetadata", {}).get(
                "HTTPStatusCode", ""
            )
            raise S3Error(
                _status_for(s3_code),
                f"S3 {what} on {target} at {self.creds.endpoint} failed: {s3_code}: {message}",
                s3_code=s3_code,
            ) from err
        except (botocore.exceptions.BotoCoreError, OSError) as err:
            raise S3Error(
                Code.UNAVAILABLE,
                f"S3 {what} on {target} at {self.creds.endpoint} failed: {err}",
                s3_code="Unreachable",
            ) from err

    def bucket_exists(self, bucket: str) -> bool:
        try:
            self._call("HeadBucket", f"bucket {bucket}", self._client.head_bucket, Bucket=bucket)
        except S3Error as err:
            if err.code is Code.NOT_FOUND:
                return False
            raise
        return True

    def create_bucket(self, bucket: str) -> bool:
        """Idempotent: a bucket we already own is success. True if it was made now."""
        try:
            self._call(
                "CreateBucket", f"bucket {bucket}", self._client.create_bucket, Bucket=bucket
            )
        except S3Error as err:
            if err.s3_code == "BucketAlreadyOwnedByYou":
                return False
            if err.s3_code == "BucketAlreadyExists":
                err.code = Code.ALREADY_EXISTS
            raise
        return True

    def bucket_tag(self, bucket: str, key: str) -> str | None:
        try:
            tags = self._call(
                "GetBucketTagging",
                f"bucket {bucket}",
                self._client.get_bucket_tagging,
                Bucket=bucket,
            )
        except S3Error as err:
            if err.code is Code.NOT_FOUND or "NoSuchTagSet" in err.s3_code:
                return None
            raise
        for tag in tags.get("TagSet", []):
            if tag.get("Key") == key:
                return str(tag.get("Value"))
        return None

    def set_bucket_tag(self, bucket: str, key: str, value: str) -> None:
        self._call(
            "PutBucketTagging",
            f"bucket {bucket}",
            self._client.put_bucket_tagging,
            Bucket=bucket,
            Tagging={"TagSet": [{"Key": key, "Value": value}]},
        )

    def put_marker(self, ref: VolumeRef) -> None:
        """The directory object of a prefix volume (so FUSE mounters see the directory)."""
        self._call(
            "PutObject",
            f"{ref.bucket}/{ref.key_prefix}",
            self._client.put_object,
            Bucket=ref.bucket,
            Key=ref.key_prefix,
            Body=b"",
        )

    def exists(self, ref: VolumeRef) -> bool:
        """Whether the volume is there: its bucket, or its prefix's directory object."""
        if not ref.prefix:
            return self.bucket_exists(ref.bucket)
        listing = self._call(
            "ListObjectsV2",
            f"{ref.bucket}/{ref.key_prefix}",
            self._client.list_objects_v2,
            Bucket=ref.bucket,
            Prefix=ref.key_prefix,
            MaxKeys=1,
        )
        return bool(listing.get("KeyCount", 0))

    def check_access(self, ref: VolumeRef) -> None:
        """Raise the S3 error a mount would hit: missing bucket/prefix, bad keys, no server."""
        self._call(
            "ListObjectsV2",
            f"{ref.bucket}/{ref.key_prefix}",
            self._client.list_objects_v2,
            Bucket=ref.bucket,
            Prefix=ref.key_prefix,
            MaxKeys=1,
        )

    def delete_volume(self, ref: VolumeRef) -> int:
        """Delete every object of the volume (and its bucket, for a bucket volume); idempotent."""
        deleted = 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Prefix": ref.key_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = self._call(
                    "ListObjectsV2",
                    f"{ref.bucket}/{ref.key_prefix}",
                    self._client.list_objects_v2,
                    **kwargs,
                )
            except S3Error as err:
                if err.s3_code == "NoSuchBucket":
                    return deleted
                raise
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self._call(
                    "DeleteObjects",
                    f"bucket {ref.bucket}",
                    self._client.delete_objects,
                    Bucket=ref.bucket,
                    Delete={"Objects": keys, "Quiet": True},
                )
                deleted += len(keys)
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        if not ref.prefix:
            try:
                self._call(
                    "DeleteBucket",
                    f"bucket {ref.bucket}",
                    self._client.delete_bucket,
                    Bucket=ref.bucket,
                )
            except S3Error as err:
                if err.s3_code != "NoSuchBucket":
                    raise
        return deleted
