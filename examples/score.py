"""Example Azure ML entry script: a 64-feature MLP served with ONNX Runtime.

It follows the Azure ML contract unchanged: ``init()`` loads the model from
``AZUREML_MODEL_DIR``, ``run(raw_data)`` receives the request body as a string.
The same file runs under ``azmlinfsrv`` and under ``scorehost``.
"""

import json
import os

import numpy as np
import onnxruntime as ort

session = None


def init():
    global session
    model_dir = os.getenv("AZUREML_MODEL_DIR", os.path.join(os.path.dirname(__file__), "model"))
    options = ort.SessionOptions()
    # One intra-op thread: the server runs requests concurrently itself.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), options, providers=["CPUExecutionProvider"])
    print("model loaded from", model_dir)


def run(raw_data):
    data = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    (predictions,) = session.run(None, {"data": data})
    return {"predictions": predictions.tolist()}
