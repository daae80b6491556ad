"""CRI stats through crictl (ListContainerStats, ListPodSandboxStats): beyond CPU and memory
usage, RSS and page faults, the writable layer's usage, the pod's process count and its
network counters read inside the pod's own network namespace."""

import json

from tests.integration.runtime.conftest import CRI

MiB = 1024 * 1024
WRITER = ["sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=3 2>/dev/null; echo done; "
          "while true; do sleep 1; done"]  # fmt: skip


def test_container_and_pod_stats(cri: CRI) -> None:
    """crictl stats/statsp show rss, page faults, writable-layer bytes, process count and a
    network reading; statsp nests the container's stats in its pod's."""
    pod_id, ctr_id = cri.run_container("st", "main", WRITER)
    cri.wait_state(ctr_id, "CONTAINER_RUNNING")
    cri.crictl("exec", "--sync", ctr_id, "sh", "-c", "while [ ! -e /fill ]; do sleep 0.1; done")
    (c,) = json.loads(cri.crictl("stats", "-o", "json", "--id", ctr_id))["stats"]
    assert c["attributes"]["id"] == ctr_id
    mem = c["memory"]
    assert int(mem["rssBytes"]["value"]) > 0 and int(mem["pageFaults"]["value"]) > 0
    assert "availableBytes" not in mem  # no memory limit
    layer = c["writableLayer"]
    assert int(layer["usedBytes"]["value"]) >= 3 * MiB
    assert int(layer["inodesUsed"]["value"]) >= 1 and layer["fsId"]["mountpoint"].endswith("upper")
    (p,) = json.loads(cri.crictl("statsp", "-o", "json", "--id", pod_id))["stats"]
    linux = p["linux"]
    assert p["attributes"]["id"] == pod_id
    assert int(linux["process"]["processCount"]["value"]) >= 2  # sh and its sleep
    assert int(linux["network"]["timestamp"]) > 0
    assert linux["network"].get("interfaces", []) == []  # loopback only, and lo is left out
    assert [x["attributes"]["id"] for x in linux["containers"]] == [ctr_id]
    assert (
        int(linux["memory"]["workingSetBytes"]["value"])
        >= int(mem["workingSetBytes"]["value"]) // 2
    )
