"""Network probe checks: gRPC health (grpc.health.v1.Health/Check).

The worker (worker.py) decides when a probe is due and what its result means; this
module only performs one check and says how it went, with the messages upstream's
prober uses (pkg/probe/grpc), since users read them in `kubectl describe` events.

The two protobuf messages are one field each, so they are encoded by hand:
HealthCheckRequest{string service = 1}, HealthCheckResponse{ServingStatus status = 1}.
"""

import grpc

KUBE_PROBE_USER_AGENT = "kube-probe/1.37"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _go_code(code: grpc.StatusCode) -> str:
    """grpc-go's name of a status code (NOT_FOUND -> NotFound), as upstream's messages show."""
    if code == grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_health_request(service: str) -> bytes:
    """A HealthCheckRequest: field 1 (service), length-delimited; empty when service is ""."""
    if not service:
        return b""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_health_status(data: bytes) -> int:
    """The status field of a HealthCheckResponse (0, UNKNOWN, when absent)."""
    pos, status = 0, 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if key >> 3 == 1:
                status = value
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            pos += size
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return status


async def grpc_health_check(
    host: str, port: int, service: str, *, timeout_s: float
) -> tuple[bool, str]:
    """One Health/Check call (plaintext, as upstream's prober without TLS): (healthy, detail)."""
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = [("grpc.primary_user_agent", KUBE_PROBE_USER_AGENT), ("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(addr, options=options) as channel:
        check = channel.unary_unary(HEALTH_CHECK_METHOD)
        try:
            raw = await check(
                encode_health_request(service), timeout=timeout_s, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return False, (
                    "error: this server does not implement the grpc health protocol "
                    f"(grpc.health.v1.Health): {err.details()}"
                )
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                state = channel.get_state(try_to_connect=False)
                if state != grpc.ChannelConnectivity.READY:
                    return False, (
                        f'timeout: failed to connect service "{addr}" within {timeout_s:g}s: '
                        "context deadline exceeded"
                    )
                return False, f"timeout: health rpc did not complete within {timeout_s:g}s"
            return False, (
                f"error: health rpc probe failed: rpc error: code = {_go_code(code)} "
                f"desc = {err.details()}"
            )
    try:
        status = decode_health_status(raw)
    except ValueError as err:
        return False, f"error: health rpc probe failed: malformed response: {err}"
    if status != 1:
        name = SERVING_STATUS.get(status, str(status))
        return False, f'service unhealthy (responded with "{name}")'
    return True, "service healthy"
