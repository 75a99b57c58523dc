"""A managed-online-endpoint style script: azureml.ai.monitoring.Collector with pandas DataFrames."""

import json

import pandas as pd
from azureml.ai.monitoring import Collector


def init():
    global inputs_collector, outputs_collector
    inputs_collector = Collector(name="model_inputs")
    outputs_collector = Collector(name="model_outputs", on_error=lambda e: print(f"collect error: {e}"))


def run(raw_data):
    data = json.loads(raw_data)
    frame = pd.DataFrame(data["data"])
    context = inputs_collector.collect(frame)
    outputs = pd.DataFrame({"prediction": frame.sum(axis=1)})
    returned = outputs_collector.collect(outputs, context)
    if data.get("bad_type"):
        outputs_collector.collect(object(), context)  # reported to on_error, not raised
    return {"prediction": outputs["prediction"].tolist(), "correlation": str(context), "same": returned is context}
