"""How long the local control plane takes to start and stop, with warm binaries.

Run as root: python3 bench/control_plane_start.py [--runs N]
Prints a table (median and worst of N runs) of: lab namespace + PKI, apiserver /readyz,
all components healthy, and teardown. There is no upstream anchor for this figure on
these machines (kubeadm needs a kubelet and systemd), so the table is informational; the
issue's bar is "under a minute with a warm cache".
"""

import argparse
import statistics
import time

from kubelet_py.devcluster import LocalCluster, ensure_binaries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    binaries = ensure_binaries()
    starts: list[float] = []
    stops: list[float] = []
    for _ in range(args.runs):
        cluster = LocalCluster(binaries=binaries, progress=lambda _m: None)
        t0 = time.monotonic()
        cluster.start()
        t1 = time.monotonic()
        cluster.stop()
        t2 = time.monotonic()
        starts.append(t1 - t0)
        stops.append(t2 - t1)
    rows = [("start (all components healthy)", starts), ("stop (processes + namespaces)", stops)]
    print(f"{'phase':<34}{'median s':>10}{'max s':>10}")
    for label, values in rows:
        print(f"{label:<34}{statistics.median(values):>10.2f}{max(values):>10.2f}")


if __name__ == "__main__":
    main()
