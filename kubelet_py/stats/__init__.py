"""Resource usage of the node, its pods and containers: /stats/summary and what
/metrics/resource is made from (summary.py), the kernel readers (node.py) and the
usageNanoCores sampler (rates.py)."""

from kubelet_py.stats.summary import Sampler, StatsError, SummaryProvider

__all__ = ["Sampler", "StatsError", "SummaryProvider"]
