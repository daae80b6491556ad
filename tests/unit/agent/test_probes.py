"""gRPC health probe wire format (hand-encoded protobuf) and the probe fields read from pods."""

import pytest

from kubelet_py.agent.model import pod_from_api
from kubelet_py.agent.probes import decode_health_status, encode_health_request


def test_health_request_encoding() -> None:
    """HealthCheckRequest: empty for the default service, else field 1 length-delimited."""
    assert encode_health_request("") == b""
    assert encode_health_request("svc") == b"\x0a\x03svc"
    long_name = "s" * 200
    assert encode_health_request(long_name) == b"\x0a\xc8\x01" + long_name.encode()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 0),
        (b"\x08\x01", 1),
        (b"\x08\x02", 2),
        (b"\x12\x02hi\x08\x03", 3),  # an unknown field first is skipped
    ],
)
def test_health_response_decoding(raw: bytes, status: int) -> None:
    """HealthCheckResponse.status, UNKNOWN (0) when absent."""
    assert decode_health_status(raw) == status


def test_truncated_response_is_an_error() -> None:
    """A varint cut short is reported, not read as a status."""
    with pytest.raises(ValueError, match="truncated"):
        decode_health_status(b"\x08\x81")


def test_grpc_probe_fields_are_read() -> None:
    """port, service and every timing field of a gRPC probe reach the model."""
    pod = pod_from_api({
        "metadata": {"name": "p", "uid": "u"},
        "spec": {"containers": [{"name": "c", "image": "i", "livenessProbe": {
            "grpc": {"port": 9090, "service": "svc"}, "initialDelaySeconds": 2,
            "periodSeconds": 3, "timeoutSeconds": 4, "successThreshold": 1,
            "failureThreshold": 5, "terminationGracePeriodSeconds": 6,
        }}]},
    })  # fmt: skip
    probe = pod.containers[0].liveness
    assert probe is not None
    assert (probe.kind, probe.port, probe.service) == ("grpc", 9090, "svc")
    assert (probe.initial_delay_s, probe.period_s, probe.timeout_s) == (2, 3, 4)
    assert (probe.success_threshold, probe.failure_threshold) == (1, 5)
    assert probe.termination_grace_s == 6
