"""A small blocking WebSocket client (RFC 6455) for tests of the channel.k8s.io protocols.

Written against the RFC rather than with a library so the tests see the wire: the
handshake's Sec-WebSocket-Accept, masked client frames, the negotiated subprotocol.
`remotecommand()` runs one exec/attach session the way client-go's v5 executor does.
"""

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
from dataclasses import dataclass, field

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10


class WsError(Exception):
    pass


@dataclass
class WsClient:
    sock: socket.socket
    protocol: str
    status: int
    _buf: bytes = b""

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        path: str,
        protocols: list[str],
        *,
        tls: ssl.SSLContext | None = None,
        method: str = "GET",
        timeout_s: float = 30.0,
    ) -> "WsClient":
        """Open and upgrade; raises WsError with the status and body when not answered 101."""
        raw = socket.create_connection((host, port), timeout=timeout_s)
        sock: socket.socket = tls.wrap_socket(raw, server_hostname=host) if tls else raw
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Key: {key}",
        ]
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise WsError(f"connection closed during the handshake: {head!r}")
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        if status != 101:
            body = rest
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
            sock.close()
            raise WsError(f"{status}: {body.decode(errors='replace')}")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise WsError(f"bad Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")
        return cls(sock, headers.get("sec-websocket-protocol", ""), status, rest)

    def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WsError("connection closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv(self) -> tuple[int, bytes] | None:
        """The next data message (opcode, payload); None after the server's close."""
        message = b""
        opcode = 0
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else b""
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            op = b0 & 0x0F
            if op == OP_PING:
                self.send(payload, OP_PONG)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                try:
                    self.send(payload[:2], OP_CLOSE)
                except OSError:
                    pass
                return None
            if op:
                opcode = op
            message += payload
            if b0 & 0x80:
                return opcode, message

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Outcome:
    """What one remotecommand session produced."""

    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""
    frames: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def status(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.error) if self.error else {}
        return doc

    @property
    def exit_code(self) -> int:
        status = self.status
        if not status or status.get("status") == "Success":
            return 0
        details = status.get("details")
        assert isinstance(details, dict), status
        for cause in details.get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        raise AssertionError(f"no exit code in {status}")


def remotecommand(
    ws: WsClient,
    *,
    stdin: bytes | None = None,
    close_stdin: bool = True,
    resize: tuple[int, int] | None = None,
) -> Outcome:
    """Send stdin (then v5's CLOSE for channel 0) and a resize; collect channels until close."""
    b64 = "base64" in ws.protocol

    def put(channel: int, data: bytes) -> None:
        if b64:
            ws.send(str(channel).encode() + base64.b64encode(data), OP_TEXT)
        else:
            ws.send(bytes((channel,)) + data)

    if resize is not None:
        put(4, json.dumps({"Width": resize[0], "Height": resize[1]}).encode())
    if stdin is not None:
        put(0, stdin)
        if close_stdin and ws.protocol == "v5.channel.k8s.io":
            ws.send(bytes((255, 0)))
    out = Outcome()
    while True:
        got = ws.recv()
        if got is None:
            return out
        _op, data = got
        if not data:
            continue
        channel = data[0] - ord("0") if b64 else data[0]
        payload = base64.b64decode(data[1:]) if b64 else data[1:]
        out.frames.append((channel, payload))
        if channel == 1:
            out.stdout += payload
        elif channel == 2:
            out.stderr += payload
        elif channel == 3:
            out.error += payload
