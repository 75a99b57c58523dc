"""Make the reference server's import paths resolve to :mod:`server.entry.aml`.

Scripts written for Azure ML import ``rawhttp``, ``AMLRequest`` and
``AMLResponse`` from ``azureml_inference_server_http.api.aml_request`` /
``.aml_response`` or from the legacy ``azureml.contrib.services.*``, and the data
collectors from ``azureml.monitoring`` / ``azureml.ai.monitoring``
(:mod:`server.entry.monitoring`). When the real package is installed it wins: our
finder sits at the end of ``sys.meta_path`` and only answers names that no other
finder could.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

_PACKAGES = (
    "azureml_inference_server_http",
    "azureml_inference_server_http.api",
    "azureml",
    "azureml.contrib",
    "azureml.contrib.services",
    "azureml.ai",
)
# Packages that re-export server.entry.monitoring, and its module paths in the real packages.
_MONITORING_PACKAGES = ("azureml.monitoring", "azureml.ai.monitoring")
_MONITORING_MODULES = (
    "azureml.monitoring.modeldatacollector",
    "azureml.ai.monitoring.collector",
    "azureml.ai.monitoring.context",
)
# Our own name for what scripts import from us: ``from scorehost import batch`` (server.batching).
_SCOREHOST = "scorehost"
_MODULES = (
    "azureml_inference_server_http.api.aml_request",
    "azureml_inference_server_http.api.aml_response",
    "azureml.contrib.services.aml_request",
    "azureml.contrib.services.aml_response",
)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        if spec.name in _MODULES:
            from server.entry import aml

            return aml
        if spec.name in _MONITORING_MODULES:
            from server.entry import monitoring

            return monitoring
        module = types.ModuleType(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ in _MONITORING_PACKAGES:
            from server.entry import monitoring

            module.__dict__.update({name: getattr(monitoring, name) for name in monitoring.__all__})
        elif module.__name__ == _SCOREHOST:
            from server import batching

            module.__dict__.update({name: getattr(batching, name) for name in batching.__all__})


class AzureMLFinder(importlib.abc.MetaPathFinder):
    _loader = _Loader()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in _MODULES or fullname in _MONITORING_MODULES:
            return importlib.machinery.ModuleSpec(fullname, self._loader)
        if fullname in _PACKAGES or fullname in _MONITORING_PACKAGES or fullname == _SCOREHOST:
            return importlib.machinery.ModuleSpec(fullname, self._loader, is_package=True)
        return None


def install() -> None:
    """Append the finder once; real installed packages still take precedence."""
    if not any(isinstance(f, AzureMLFinder) for f in sys.meta_path):
        sys.meta_path.append(AzureMLFinder())
