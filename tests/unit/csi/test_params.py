"""Pure rules of the S3 driver: parameters, volume ids, secrets, capabilities."""

import pytest

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.errors import Code, CsiCallError
from csi_volumes.s3.capabilities import check_capabilities, is_read_only, unsupported_reason
from csi_volumes.s3.params import (
    CacheMode,
    Layout,
    Mounter,
    MountOptions,
    VolumeRef,
    name_to_bucket,
    name_to_prefix,
    parse_credentials,
    parse_mount_options,
    parse_volume_id,
    plan_volume,
)

Mode = csi_pb2.VolumeCapability.AccessMode


def code(fn: object, *args: object, **kwargs: object) -> Code:
    with pytest.raises(CsiCallError) as err:
        fn(*args, **kwargs)  # type: ignore[operator]
    return err.value.code


def test_bucket_layout_is_the_default_and_uses_the_volume_name() -> None:
    """Without a bucket parameter, a volume is a bucket named after the PV."""
    plan = plan_volume("pvc-0b3c2a10-4f1e-4c55-9d36-8f0e7c1d2b3a", {})
    assert plan.ref == VolumeRef(bucket="pvc-0b3c2a10-4f1e-4c55-9d36-8f0e7c1d2b3a")
    assert plan.ref.layout is Layout.BUCKET
    assert plan.context == {"mounter": "s3fs", "cache": "none", "layout": "bucket"}


def test_prefix_layout_when_a_bucket_is_configured() -> None:
    """bucket=... puts the volume under <name>/ in that bucket; the id is bucket/prefix."""
    plan = plan_volume("pvc-1", {"bucket": "shared-data"})
    assert plan.ref.volume_id == "shared-data/pvc-1"
    assert plan.ref.key_prefix == "pvc-1/"
    assert parse_volume_id("shared-data/pvc-1") == plan.ref


def test_reserved_parameters_are_ignored_and_unknown_ones_refused() -> None:
    """csi.storage.k8s.io/* keys belong to the CO; anything else unknown is INVALID_ARGUMENT."""
    plan = plan_volume("pvc-2", {"csi.storage.k8s.io/provisioner-secret-name": "s3"})
    assert plan.ref.bucket == "pvc-2"
    assert code(plan_volume, "pvc-2", {"colour": "blue"}) is Code.INVALID_ARGUMENT
    assert code(plan_volume, "pvc-2", {"layout": "prefix"}) is Code.INVALID_ARGUMENT
    assert code(plan_volume, "pvc-2", {"layout": "bucket", "bucket": "b"}) is Code.INVALID_ARGUMENT
    assert code(plan_volume, "", {}) is Code.INVALID_ARGUMENT
    assert code(plan_volume, "pvc-2", {"bucket": "Bad_Bucket"}) is Code.INVALID_ARGUMENT


def test_mount_options_round_trip_through_volume_context() -> None:
    """StorageClass mount options survive CreateVolume -> volume context -> node."""
    params = {"mounter": "rclone", "cache": "full", "uid": "1000", "gid": "2000", "umask": "022"}
    plan = plan_volume("pvc-3", {**params, "readOnly": "true"})
    options = parse_mount_options(plan.context, strict=False)
    assert options == MountOptions(
        mounter=Mounter.RCLONE,
        cache=CacheMode.FULL,
        uid=1000,
        gid=2000,
        umask=0o022,
        read_only=True,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("uid", "-1"),
        ("gid", "root"),
        ("umask", "999"),
        ("mounter", "goofys"),
        ("cache", "ram"),
        ("readOnly", "maybe"),
    ],
)
def test_bad_mount_options_are_invalid_arguments(key: str, value: str) -> None:
    """Each malformed option is refused with the parameter named in the message."""
    with pytest.raises(CsiCallError) as err:
        parse_mount_options({key: value})
    assert err.value.code is Code.INVALID_ARGUMENT and key in err.value.message


def test_long_or_odd_names_become_valid_stable_buckets_and_prefixes() -> None:
    """Names that break S3 rules get a sanitized, hashed, stable bucket or prefix."""
    long = "PVC_" + "x" * 80
    bucket = name_to_bucket(long)
    assert bucket == name_to_bucket(long) and 3 <= len(bucket) <= 63
    assert bucket.islower() and "_" not in bucket
    assert name_to_bucket("ab") != "ab" and len(name_to_bucket("ab")) >= 3
    assert name_to_prefix("pvc-9") == "pvc-9"
    odd = name_to_prefix("a/b c")
    assert "/" not in odd and " " not in odd and odd == name_to_prefix("a/b c")


def test_volume_ids_that_are_not_ours_are_not_found() -> None:
    """A malformed id is NOT_FOUND (the volume does not exist); an empty one INVALID_ARGUMENT."""
    assert code(parse_volume_id, "") is Code.INVALID_ARGUMENT
    assert code(parse_volume_id, "UPPER/x") is Code.NOT_FOUND
    assert code(parse_volume_id, "bucket/../etc") is Code.NOT_FOUND
    assert parse_volume_id("bucket") == VolumeRef(bucket="bucket")


def test_credentials_need_endpoint_and_keys_and_hide_the_secret() -> None:
    """Missing keys or a non-http endpoint are INVALID_ARGUMENT; repr never shows the secret."""
    creds = parse_credentials(
        {"endpoint": "http://127.0.0.1:8333/", "accessKeyID": "AK", "secretAccessKey": "SK"},
        call="NodeStageVolume",
    )
    assert creds.endpoint == "http://127.0.0.1:8333" and creds.region == "us-east-1"
    assert "SK" not in repr(creds)
    with pytest.raises(CsiCallError, match="secretAccessKey"):
        parse_credentials({"endpoint": "http://h", "accessKeyID": "AK"}, call="x")
    assert (
        code(
            parse_credentials,
            {"endpoint": "ftp://h", "accessKeyID": "a", "secretAccessKey": "b"},
            call="x",
        )
        is Code.INVALID_ARGUMENT
    )


def _cap(mode: int, *, block: bool = False) -> csi_pb2.VolumeCapability:
    if block:
        return csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=Mode(mode=mode)
        )
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(), access_mode=Mode(mode=mode)
    )


def test_capabilities_mount_only_any_access_mode() -> None:
    """Every access mode of a mount volume is served; block and unknown modes are not."""
    for mode in (
        Mode.SINGLE_NODE_WRITER,
        Mode.MULTI_NODE_MULTI_WRITER,
        Mode.MULTI_NODE_READER_ONLY,
    ):
        assert unsupported_reason(_cap(mode)) == ""
    assert "block" in unsupported_reason(_cap(Mode.SINGLE_NODE_WRITER, block=True))
    assert "access mode" in unsupported_reason(_cap(Mode.UNKNOWN))
    assert is_read_only(_cap(Mode.MULTI_NODE_READER_ONLY)) and not is_read_only(
        _cap(Mode.SINGLE_NODE_WRITER)
    )
    assert code(check_capabilities, [], call="CreateVolume") is Code.INVALID_ARGUMENT
    blocked = code(
        check_capabilities,
        [_cap(1, block=True)],
        call="NodeStageVolume",
        code=Code.FAILED_PRECONDITION,
    )
    assert blocked is Code.FAILED_PRECONDITION
