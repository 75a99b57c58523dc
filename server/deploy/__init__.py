"""Deployment: pure functions from an Azure ML deployment config to manifests.

* :mod:`.config` the deployment-config model (Azure's field names and defaults);
* :mod:`.k8s`    renders Kubernetes manifests from it (``scorehost k8s``).

Runs in the CLI only; no server process imports it.
"""
