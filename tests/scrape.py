"""Scraping a live server's /metrics in tests, with prometheus_client's own parser."""

from __future__ import annotations

import time
from collections.abc import Callable

import plain_http
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, path: str = "/metrics") -> Samples:
    response = plain_http.get(url + path, timeout=10)
    assert response.status_code == 200, response.text
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for(url: str, check: Callable[[Samples], bool], timeout: float = 10.0, path: str = "/metrics") -> Samples:
    """Scrape until ``check`` holds (values the workers report arrive within about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url, path)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)
