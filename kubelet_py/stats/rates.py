"""usageNanoCores from two samples of a cumulative CPU counter.

A counter (ns of CPU time) read twice gives a rate in ns per s of wall time, which
is nano-cores. Samples closer than `min_window_ns` reuse the last rate rather than
dividing noise by a tiny interval; keys not seen for `forget_after_ns` are dropped,
so containers that are gone do not pile up. Pure: time comes in with every sample.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class _Sample:
    at_ns: int
    usage_ns: int
    rate: int | None


class CpuRates:
    def __init__(
        self, *, min_window_ns: int = 1_000_000_000, forget_after_ns: int = 300_000_000_000
    ) -> None:
        self.min_window_ns = min_window_ns
        self.forget_after_ns = forget_after_ns
        self._samples: dict[str, _Sample] = {}

    def observe(self, key: str, *, at_ns: int, usage_ns: int) -> int | None:
        """Record a sample; return nano-cores over the last window, None before a second sample."""
        prev = self._samples.get(key)
        if prev is None or usage_ns < prev.usage_ns or at_ns < prev.at_ns:
            # first sight, or a counter that went back (a new cgroup under the same key)
            self._samples[key] = _Sample(at_ns, usage_ns, None)
            return None
        window = at_ns - prev.at_ns
        if window < self.min_window_ns:
            return prev.rate
        rate = (usage_ns - prev.usage_ns) * 1_000_000_000 // window
        self._samples[key] = _Sample(at_ns, usage_ns, rate)
        return rate

    def forget_stale(self, now_ns: int) -> None:
        for key in [k for k, s in self._samples.items() if now_ns - s.at_ns > self.forget_after_ns]:
            del self._samples[key]

    def __len__(self) -> int:
        return len(self._samples)
