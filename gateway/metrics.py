"""A small Prometheus registry: counters, gauges and histograms with labels, rendered as text.

One process-wide `METRICS` registry; modules record into it where things happen
and `/metrics` renders it (text exposition format 0.0.4).
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Sequence

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {v:g}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, *labels: str, value: float) -> None:
        with self._lock:
            self._values[labels] = value

    def render(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {v:g}" for k, v in sorted(self._values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = _LATENCY_BUCKETS):
        super().__init__(name, help, labels)
        self.buckets = tuple(buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., +Inf count, sum

    def observe(self, value: float, *labels: str) -> None:
        # Counts per bucket (not cumulative) so an observation touches one slot; render() accumulates.
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [0.0] * (len(self.buckets) + 2)
            series[bisect.bisect_left(self.buckets, value)] += 1
            series[-1] += value

    def render(self) -> list[str]:
        lines = []
        for key, counts in sorted(self._series.items()):
            series = list(itertools.accumulate(counts[:-1])) + counts[-1:]
            for bound, count in zip(self.buckets, series, strict=False):
                le = f'le="{bound:g}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {count:g}")
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, inf)} {series[-2]:g}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {series[-2]:g}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {series[-1]:g}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> _Metric:
        return self._metrics.setdefault(metric.name, metric)

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        metric = self.register(Counter(name, help, labels))
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        metric = self.register(Gauge(name, help, labels))
        assert isinstance(metric, Gauge)
        return metric

    def histogram(self, name: str, help: str, labels: Sequence[str] = ()) -> Histogram:
        metric = self.register(Histogram(name, help, labels))
        assert isinstance(metric, Histogram)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.header() + metric.render()
        return "\n".join(lines) + "\n"


METRICS = Registry()
