"""Public API for entry scripts: ``from server.aml import rawhttp, AMLRequest, AMLResponse``.

A stable re-export of :mod:`server.entry.aml`; scripts may import either path.
"""

from server.entry.aml import AMLRequest, AMLResponse, rawhttp

__all__ = ["AMLRequest", "AMLResponse", "rawhttp"]
