"""Events users read in `kubectl describe`: Pulling, Pulled, Created, Started, Killing, BackOff…

Posted in the background so a slow API never stalls a pod worker; in standalone
mode they go to the log only.
"""

import asyncio
import datetime
import logging
import secrets
from typing import Any

from kubelet_py.agent.apiclient import ApiClient, ApiError
from kubelet_py.agent.model import Pod

log = logging.getLogger("kubelet_py.events")


class EventRecorder:
    def __init__(self, api: ApiClient | None, *, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self._tasks: set[asyncio.Task[None]] = set()

    def emit(self, pod: Pod, kind: str, reason: str, message: str, *, field_path: str = "") -> None:
        log.info("pod %s: %s %s: %s", pod.full_name, kind, reason, message)
        if self.api is None:
            return
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ref: dict[str, Any] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "namespace": pod.namespace,
            "name": pod.name,
            "uid": pod.uid,
        }
        if field_path:
            ref["fieldPath"] = field_path
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pod.name}.{secrets.token_hex(8)}", "namespace": pod.namespace},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
        }
        task = asyncio.get_running_loop().create_task(self._post(pod, body), name="event-post")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, pod: Pod, body: dict[str, Any]) -> None:
        assert self.api is not None
        try:
            await self.api.create(f"/api/v1/namespaces/{pod.namespace}/events", body)
        except (ApiError, OSError) as err:
            log.warning(
                "posting event %s for pod %s failed: %s", body["reason"], pod.full_name, err
            )

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
