"""Manifest and index parsing, and choosing this platform's manifest from an index."""

import json

import pytest

from cri.images import NoMatchingPlatformError, Platform, UnsupportedMediaTypeError
from cri.images import mediatypes as mt
from cri.images.manifest import Index, Manifest, parse_document, select_platform

D = "sha256:" + "c" * 64


def _manifest(media_type: str | None, layer_type: str = mt.OCI_LAYER_GZIP) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": D, "size": 10},
        "layers": [{"mediaType": layer_type, "digest": D, "size": 20}],
    }
    if media_type:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


def _index(*platforms: tuple[str, str, str | None]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": mt.OCI_MANIFEST,
                    "digest": "sha256:" + f"{i:x}" * 64,
                    "size": 1,
                    "platform": {"os": o, "architecture": a, **({"variant": v} if v else {})},
                }
                for i, (o, a, v) in enumerate(platforms, start=1)
            ],
        }
    ).encode()


@pytest.mark.parametrize("media_type", [mt.OCI_MANIFEST, mt.DOCKER_MANIFEST])
def test_oci_and_docker_manifests_parse(media_type: str) -> None:
    """Both manifest flavours give the config and layer descriptors."""
    doc = parse_document(_manifest(media_type), None, what="t")
    assert isinstance(doc, Manifest)
    assert doc.config.size == 10 and doc.layers[0].size == 20


def test_media_type_can_come_from_content_type() -> None:
    """A manifest without mediaType uses the response's Content-Type."""
    doc = parse_document(_manifest(None), mt.DOCKER_MANIFEST + "; charset=utf-8", what="t")
    assert isinstance(doc, Manifest) and doc.media_type == mt.DOCKER_MANIFEST


@pytest.mark.parametrize("layer_type", [mt.OCI_LAYER_TAR, mt.OCI_LAYER_ZSTD, mt.DOCKER_LAYER_GZIP])
def test_supported_layer_types(layer_type: str) -> None:
    """Uncompressed, zstd and Docker gzip layers are accepted."""
    assert isinstance(
        parse_document(_manifest(mt.OCI_MANIFEST, layer_type), None, what="t"), Manifest
    )


@pytest.mark.parametrize(
    "body",
    [
        _manifest("application/vnd.docker.distribution.manifest.v1+prettyjws"),
        _manifest(mt.OCI_MANIFEST, "application/x-unknown-layer"),
        b"{not json",
    ],
)
def test_unknown_media_types_are_typed_errors(body: bytes) -> None:
    """Schema 1, unknown layer types and garbage raise UnsupportedMediaTypeError."""
    with pytest.raises(UnsupportedMediaTypeError):
        parse_document(body, None, what="t")


def test_platform_selection_prefers_the_exact_variant() -> None:
    """linux/arm64/v8 is chosen over linux/arm64 without variant, and amd64 by os+arch."""
    index = parse_document(
        _index(("linux", "arm64", None), ("linux", "arm64", "v8"), ("linux", "amd64", None)),
        None,
        what="t",
    )
    assert isinstance(index, Index)
    arm = select_platform(index, Platform("linux", "arm64", "v8"), what="t")
    assert arm.platform == Platform("linux", "arm64", "v8")
    amd = select_platform(index, Platform("linux", "amd64"), what="t")
    assert amd.platform == Platform("linux", "amd64")


def test_missing_platform_lists_what_the_index_has() -> None:
    """No manifest for this platform: the error names what is offered."""
    index = parse_document(
        _index(("linux", "arm64", "v8"), ("windows", "amd64", None)), None, what="img"
    )
    assert isinstance(index, Index)
    with pytest.raises(NoMatchingPlatformError, match="linux/arm64/v8, windows/amd64"):
        select_platform(index, Platform("linux", "amd64"), what="img")
