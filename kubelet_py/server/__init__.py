"""The kubelet's HTTPS API (port 10250): container logs, pods, healthz, configz."""

from kubelet_py.server.config import ServerConfig
from kubelet_py.server.server import KubeletHost, KubeletServer

__all__ = ["KubeletHost", "KubeletServer", "ServerConfig"]
