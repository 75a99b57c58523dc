"""Deployment: pure functions from Azure ML deployment configs to manifests.

* :mod:`.config`    the deployment-config model (Azure's field names and defaults);
* :mod:`.k8s`       one deployment's Kubernetes objects (``scorehost k8s render``);
* :mod:`.autoscale` its autoscaler, on the pods' busy-replica utilisation (KEDA or HPA; CPU fallback);
* :mod:`.versions`  endpoint specs: versions, traffic percentiles and the AksEndpoint rules;
* :mod:`.gateway`   an endpoint's objects and its Gateway API HTTPRoute;
* :mod:`.checks`    semantic checks of rendered objects;
* :mod:`.commands`  the ``scorehost k8s`` command line;
* :mod:`.migrate`   ``scorehost migrate``: managed online endpoint YAML, with :mod:`.skus` (SKU table, costs);
* :mod:`.yamlio`    YAML out, YAML/JSON in.

Runs in the CLI only; no server process imports it.
"""
