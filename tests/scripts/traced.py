"""Traces its own work with the OpenTelemetry API and logs a line inside run()."""

import logging
import os

from opentelemetry import trace

tracer = trace.get_tracer("user.script")
log = logging.getLogger("user.script")


def init():
    pass


def run(data):
    with tracer.start_as_current_span("user work") as span:
        span.set_attribute("user.body_bytes", len(data))
        log.info("inside user work")
        ctx = span.get_span_context()
        return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}", "pid": os.getpid()}
