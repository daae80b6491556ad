"""A small Prometheus registry: counters, gauges and histograms with labels, text format 0.0.4.

Why not prometheus_client: the agent needs a handful of metric families, sample
timestamps (for /metrics/resource) and no threads; this is ~150 lines with no
global collectors. HELP lines carry component-base's stability prefix (`[ALPHA] …`,
`[STABLE] …`) as the upstream kubelet prints them; families come out sorted by name,
as client_golang's Gather sorts them.
"""

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

LabelValues = tuple[str, ...]


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def fmt_value(v: float) -> str:
    """Go's strconv.FormatFloat(v, 'g', -1, 64) as client_golang writes sample values."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    text = repr(v)
    if "e" in text:
        mant, _, exp = text.partition("e")
        sign = "-" if exp.startswith("-") else "+"
        digits = exp.lstrip("+-").lstrip("0")
        return f"{mant}e{sign}{digits.zfill(2)}"
    return text


def labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def help_block(name: str, kind: str, help_text: str, stability: str) -> list[str]:
    return [
        f"# HELP {name} [{stability}] {escape_help(help_text)}",
        f"# TYPE {name} {kind}",
    ]


@dataclass(frozen=True)
class Sample:
    """One line of a family made at scrape time (for collectors such as /metrics/resource)."""

    labels: tuple[tuple[str, str], ...]
    value: float
    timestamp_ms: int | None = None

    def line(self, name: str) -> str:
        lbl = labels_text([k for k, _ in self.labels], [v for _, v in self.labels])
        ts = f" {self.timestamp_ms}" if self.timestamp_ms is not None else ""
        return f"{name}{lbl} {fmt_value(self.value)}{ts}"


def family_text(
    name: str, kind: str, help_text: str, stability: str, samples: Iterable[Sample]
) -> list[str]:
    return [*help_block(name, kind, help_text, stability), *(s.line(name) for s in samples)]


class _Metric:
    kind = ""

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), *, stability: str = "ALPHA"
    ) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self.stability = stability
        self._lock = threading.Lock()

    def _key(self, values: Sequence[str]) -> LabelValues:
        if len(values) != len(self.label_names):
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {values}")
        return tuple(str(v) for v in values)

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), *, stability: str = "ALPHA"
    ) -> None:
        super().__init__(name, help_text, labels, stability=stability)
        self._values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + by

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items:
            if self.label_names:
                return []  # client_golang leaves out a vector with no series
            items = [((), 0.0)]
        out = help_block(self.name, self.kind, self.help, self.stability)
        out += [f"{self.name}{labels_text(self.label_names, k)} {fmt_value(v)}" for k, v in items]
        return out


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, values: dict[LabelValues, float]) -> None:
        """Set every labelled value at once; label sets not given disappear."""
        with self._lock:
            self._values = {self._key(k): float(v) for k, v in values.items()}


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        stability: str = "ALPHA",
    ) -> None:
        super().__init__(name, help_text, labels, stability=stability)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, sums = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            counts[-1] += 1
            sums[0] += value

    def count(self, *labels: str) -> int:
        series = self._series.get(self._key(labels))
        return series[0][-1] if series else 0

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._series.items())
        if not items:
            if self.label_names:
                return []
            items = [((), ([0] * (len(self.buckets) + 1), 0.0))]
        out = help_block(self.name, self.kind, self.help, self.stability)
        for key, (counts, total) in items:
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                le = f'le="{fmt_value(bound)}"'
                out.append(f"{self.name}_bucket{labels_text(self.label_names, key, le)} {n}")
            out.append(f"{self.name}_sum{labels_text(self.label_names, key)} {fmt_value(total)}")
            out.append(f"{self.name}_count{labels_text(self.label_names, key)} {counts[-1]}")
        return out


M = TypeVar("M", bound=_Metric)


def exponential_buckets(start: float, factor: float, count: int) -> list[float]:
    return [start * factor**i for i in range(count)]


DEF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def text(self) -> str:
        lines: list[str] = []
        for name in sorted(self._metrics):
            lines += self._metrics[name].lines()
        return "\n".join(lines) + "\n"
