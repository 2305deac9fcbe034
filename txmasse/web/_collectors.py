"""
The dashboard's C{/metrics}: this process's metrics, and the registry's
view counted at each scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from txmasse.web._records import health
from txmasse.web._view import NamespaceView


class InstancesCollector:
    """
    C{masse_instances}: the registry's view, counted at each scrape.
    """

    def __init__(self, views: Iterable[NamespaceView]):
        self._views = list(views)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "masse_instances",
            "Live instances in the registry, as this dashboard sees them.",
            labels=["namespace", "name", "health"],
        )

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        counts: Counter[tuple[str, str, str]] = Counter()
        for view in self._views:
            for record in view.members:  # a tuple, replaced whole: safe from this thread
                counts[(record.namespace, record.name, health(record)[0])] += 1
        family = self._family()
        for labels, count in sorted(counts.items()):
            family.add_metric(list(labels), count)
        yield family


class ProcessCollector:
    """
    The metrics of this process (C{prometheus_client}'s default registry).
    """

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()
