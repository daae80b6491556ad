"""exec, attach and port-forward streams (SPDY/3.1, WebSocket) and the CRI streaming server.

    spdy.py           SPDY/3.1 framing (server side)
    channels.py       one Session/Channel shape over SPDY streams and WebSocket channels
    upgrade.py        upgrade and negotiation (v5/v4… channel.k8s.io, portforward.k8s.io)
    remotecommand.py  exec and attach over a session
    portforward.py    port-forward into a pod's network namespace (SPDY, or SPDY in a WebSocket)
    server.py         the URL server the CRI Exec/Attach/PortForward calls hand out (tokens)

The kubelet API (kubelet_py.server) proxies to the URLs; this package imports nothing of it.
"""

from cri.streaming.channels import ExecOptions
from cri.streaming.portforward import serve_port_forward
from cri.streaming.remotecommand import (
    ExecProcess,
    OptionsError,
    exec_options,
    parse_exec_options,
    serve_attach,
    serve_exec,
)
from cri.streaming.server import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamingError,
    StreamingServer,
)
from cri.streaming.upgrade import open_remotecommand

__all__ = [
    "AttachRequest",
    "ExecOptions",
    "ExecProcess",
    "ExecRequest",
    "OptionsError",
    "PortForwardRequest",
    "StreamingError",
    "StreamingServer",
    "exec_options",
    "open_remotecommand",
    "parse_exec_options",
    "serve_attach",
    "serve_exec",
    "serve_port_forward",
]
