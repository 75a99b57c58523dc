"""The ONNX model store: runs inside a worker process, knows nothing of HTTP.

* :mod:`.repository` finds models on disk and reads their ``*.scorehost.json`` configs;
* :mod:`.sessions`   ONNX Runtime: providers, devices, session options, one model's run;
* :mod:`.cuda`       what a process does once before its first CUDA session;
* :mod:`.store`      up to ``max_models`` models with bounded threads and memory
                     (public as ``server.models.get_store``);
* :mod:`.v2`         the Open Inference Protocol (KServe V2) over the store.
"""
