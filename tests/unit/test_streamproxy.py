"""The kubelet's stream proxy: what it sends to the runtime's URL, how it reads the answer."""

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from kubelet_py.server.streamproxy import StreamProxyError, _parse_head, _upstream_request


def test_upgrade_headers_and_raw_query_go_upstream() -> None:
    """Method, path, the raw (still encoded) query and every upgrade header are forwarded."""
    headers = CIMultiDict(
        [
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v3.channel.k8s.io"),
            ("Authorization", "Bearer secret"),
        ]
    )
    req = make_mocked_request(
        "POST", "/exec/ns/pod/c?command=sh&command=-c&command=echo%20hi%3B%20exit%203", headers
    )
    host, port, head = _upstream_request(req, "http://127.0.0.1:4321/exec/TOKEN")
    assert (host, port) == ("127.0.0.1", 4321)
    lines = head.decode().split("\r\n")
    assert (
        lines[0]
        == "POST /exec/TOKEN?command=sh&command=-c&command=echo%20hi%3B%20exit%203 HTTP/1.1"
    )
    assert "Host: 127.0.0.1:4321" in lines
    assert lines.count("X-Stream-Protocol-Version: v4.channel.k8s.io") == 1
    assert "X-Stream-Protocol-Version: v3.channel.k8s.io" in lines
    assert not any(line.startswith("Authorization") for line in lines)  # credentials stay here
    assert head.endswith(b"\r\n\r\n")


def test_only_http_urls() -> None:
    """A URL that is not http://host:port/... is refused with the URL in the message."""
    req = make_mocked_request("GET", "/exec/ns/pod/c")
    with pytest.raises(StreamProxyError, match="unix:///x"):
        _upstream_request(req, "unix:///x")


def test_parse_head() -> None:
    """The status line and headers of the runtime's answer."""
    status, reason, headers = _parse_head(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: "
        b"v4.channel.k8s.io\r\n\r\n"
    )
    assert (status, reason) == (101, "Switching Protocols")
    assert ("X-Stream-Protocol-Version", "v4.channel.k8s.io") in headers
    with pytest.raises(StreamProxyError):
        _parse_head(b"garbage\r\n\r\n")
