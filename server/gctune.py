"""Garbage-collector settings for long-lived server processes."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Keep garbage-collection pauses out of the latency tail.

    Everything alive after start-up (modules, the app, the user's model in a worker)
    lives as long as the process: ``gc.freeze()`` moves it out of the collector's
    sight, so collections traverse only what requests allocate. A larger first
    generation makes collections rarer; request objects die young, so they cost
    little more each. Measured at 64 connections on one core: p99 8.6 -> 4.x ms.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
