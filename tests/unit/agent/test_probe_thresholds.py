"""A probe's result flips only after successThreshold / failureThreshold consecutive outcomes,
and runs no sooner than initialDelaySeconds after start and periodSeconds apart."""

import asyncio
from pathlib import Path
from typing import Any

from kubelet_py.agent.events import EventRecorder
from kubelet_py.agent.model import Container, Pod, Probe
from kubelet_py.agent.plan import Backoff, ContainerObs, CState
from kubelet_py.agent.volumes import VolumeManager
from kubelet_py.agent.worker import NodeContext, PodWorker, ProbeState


def _worker(tmp_path: Path, outcomes: list[bool]) -> PodWorker:
    pod = Pod(uid="u", name="p", namespace="ns", node_name="n",
              containers=(Container(name="c", image="i"),))  # fmt: skip
    node = NodeContext(
        node_name="n", host_ip="10.0.0.1", root=tmp_path, log_root=tmp_path,
        cluster_dns=(), cluster_domain="cluster.local", host_resolv=((), (), ()),
    )  # fmt: skip
    volumes = VolumeManager(tmp_path, api=None, node_name="n")
    worker = PodWorker(
        pod, cri=None, api=None, volumes=volumes,  # type: ignore[arg-type]
        events=EventRecorder(None, node_name="n"), node=node, backoff=Backoff(),
    )  # fmt: skip

    async def fake_once(probe: Probe, o: Any, *, timeout_s: int | None = None) -> tuple[bool, str]:
        return outcomes.pop(0), "scripted"

    worker._probe_once = fake_once  # type: ignore[method-assign]
    return worker


def test_thresholds_and_timing(tmp_path: Path) -> None:
    """3 successes to pass, 2 failures to fail; nothing before the initial delay or the period."""
    probe = Probe(kind="grpc", port=1, initial_delay_s=5, period_s=2,
                  success_threshold=3, failure_threshold=2)  # fmt: skip
    outcomes = [True, True, True, False, True, False, False]
    worker = _worker(tmp_path, outcomes)
    obs = ContainerObs(id="cid", name="c", attempt=0, state=CState.RUNNING)
    st = ProbeState()
    c = worker.pod.containers[0]
    results = []

    async def run() -> None:
        for now in (100.0, 104.9, 105.0, 106.0, 107.0, 109.0, 111.0, 113.0, 115.0, 117.0):
            ran = await worker._probe(c, "readiness", probe, obs, st, now, started=100.0)
            results.append((now, ran, st.result))

    asyncio.run(run())
    assert results == [
        (100.0, False, None),  # initial delay
        (104.9, False, None),
        (105.0, True, None),  # success 1
        (106.0, False, None),  # period not over
        (107.0, True, None),  # success 2
        (109.0, True, True),  # success 3: passes
        (111.0, True, True),  # one failure is not enough
        (113.0, True, True),  # success again
        (115.0, True, True),  # failure 1
        (117.0, True, False),  # failure 2: fails
    ]
    assert outcomes == []
