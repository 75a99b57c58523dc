"""An AKS-era script: azureml.monitoring.ModelDataCollector with numpy arrays and lists."""

import json

import numpy as np
from azureml.monitoring import ModelDataCollector


def init():
    global inputs_dc, predictions_dc
    inputs_dc = ModelDataCollector("best_model", designation="inputs", feature_names=["f1", "f2"])
    predictions_dc = ModelDataCollector("best_model", designation="predictions", feature_names=["prediction"])
    inputs_dc.collect([0, 0])  # in init(): no request yet


def run(raw_data):
    data = np.array(json.loads(raw_data)["data"])
    correlations = inputs_dc.collect(data)
    result = data.sum(axis=1)
    predictions_dc.collect(result.reshape(-1, 1).tolist())
    return {"result": result.tolist(), "correlations": correlations}
