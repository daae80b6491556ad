"""Kubernetes Events from a node driver: what happened to a volume, told on the pods using it.

The driver learns a pod's namespace, name and uid from NodePublishVolume's volume context
(the CSIDriver's `podInfoOnMount: true`); when it later remounts a dead FUSE mount under
those pods, each of them gets an Event, so `kubectl describe pod` shows it beside the
kubelet's own. Posting is best effort and off the RPC path: an Event that cannot be
written is logged, never a reason for a mount operation to fail.

Credentials: `--kubeconfig` (on a kubelet-py node, the node's own; its Node authorizer
lets a node create Events), or the in-cluster service account when run in a pod.
"""

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("csi_volumes.kube_events")

#: (namespace, name, uid) of a pod
PodRef = tuple[str, str, str]


def event_body(
    pod: PodRef, *, warning: bool, reason: str, message: str, component: str, host: str
) -> dict[str, Any]:
    """A core/v1 Event about `pod`, named as the kubelet's recorder names them."""
    namespace, name, uid = pod
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": name,
            "uid": uid,
        },
        "type": "Warning" if warning else "Normal",
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component, "host": host},
        "reportingComponent": component,
        "reportingInstance": host,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventSink:
    """Posts Events in the background; `kubeconfig=None` and no in-cluster config → log only."""

    def __init__(self, kubeconfig: Path | None, *, component: str, host: str) -> None:
        self.kubeconfig = kubeconfig
        self.component = component
        self.host = host
        self._core: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.kubeconfig is not None or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    def _api(self) -> Any:
        if self._core is None:
            from kubernetes import client, config  # heavy: only when used

            if self.kubeconfig is not None:
                api = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
            else:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
                api = client.ApiClient()
            self._core = client.CoreV1Api(api)
        return self._core

    def _post(self, body: dict[str, Any]) -> None:
        involved = body["involvedObject"]
        try:
            self._api().create_namespaced_event(body["metadata"]["namespace"], body)
        except Exception as err:  # noqa: BLE001 - API, config and network errors alike: logged
            log.warning(
                "could not post Event %s on pod %s/%s: %s",
                body["reason"],
                involved["namespace"],
                involved["name"],
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )

    def emit(self, pods: Iterable[PodRef], *, warning: bool, reason: str, message: str) -> None:
        """Queue one Event per pod (deduplicated); returns at once."""
        if not self.enabled:
            return
        for pod in dict.fromkeys(pods):
            body = event_body(
                pod,
                warning=warning,
                reason=reason,
                message=message,
                component=self.component,
                host=self.host,
            )
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._post, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (a little) for queued Events, e.g. before the driver exits."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
