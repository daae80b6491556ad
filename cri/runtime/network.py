"""The runtime's seam to pod networking: what a sandbox asks of a network, nothing more.

The runtime owns a sandbox's network namespace; joining it to a network is the
job of a `PodNetwork`, which the process that builds the runtime hands in (the
node agent or `kubelet-py cri serve` wrap the CNI caller of `cni/` in one).
Keeping the seam here keeps `cri` independent of `cni`: the runtime sees only
this Protocol. Every method blocks (plugins are processes); the runtime calls
them in threads. Errors are exceptions whose text says what failed; the
runtime puts that text on the RunPodSandbox error.

Without a PodNetwork a sandbox gets its own network namespace with only
loopback up (the CRI's "no network plugin" case).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cri.runtime.model import PortMapping


@dataclass(frozen=True)
class PodNetworkRequest:
    """One sandbox to attach: its id (CNI_CONTAINERID), netns and pod identity."""

    sandbox_id: str
    netns_path: str
    namespace: str
    name: str
    uid: str
    port_mappings: tuple[PortMapping, ...] = ()


class PodNetwork(Protocol):
    def setup(self, request: PodNetworkRequest) -> tuple[str, ...]:
        """Attach the sandbox; returns its IPs (IPv4 first). Raises on failure."""
        ...

    def teardown(self, sandbox_id: str, netns_path: str | None) -> None:
        """Detach the sandbox (idempotent; the netns may already be gone)."""
        ...

    def status(self) -> tuple[bool, str]:
        """(ready, why not) for the runtime's NetworkReady condition."""
        ...

    def gc(self, valid_sandbox_ids: Iterable[str]) -> None:
        """Release every attachment whose sandbox is not in `valid_sandbox_ids`."""
        ...
