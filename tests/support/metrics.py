"""Reading a detector's /metrics page in tests."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from consumer.stream.metrics import PREFIX


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """One /metrics page, parsed; names are given without the `cloudtrail_detector_` prefix."""

    def __init__(self, text: str) -> None:
        self.samples = [
            Sample(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def matching(self, name: str, **labels: str) -> list[Sample]:
        full = f"{PREFIX}_{name}"
        return [s for s in self.samples
                if s.name == full and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        """The one sample with exactly these labels (le aside); 0 when the series is absent,
        as an unlabelled-yet counter is."""
        found = [s for s in self.matching(name, **labels)
                 if set(s.labels) - {"le"} == set(labels)]
        assert len(found) <= 1, found
        return found[0].value if found else 0.0

    def total(self, name: str) -> float:
        return sum(sample.value for sample in self.matching(name))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {sample.labels[label]: sample.value for sample in self.matching(name)}

    def bucket_bounds(self, name: str) -> list[float]:
        return [float(s.labels["le"]) for s in self.matching(f"{name}_bucket")]


def scrape(port: int) -> Scrape:
    """The /metrics page a detector (worker) serves on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return Scrape(reply.read().decode())
