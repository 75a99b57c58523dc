import json


def init():
    pass


def run(data):
    kind = json.loads(data)["kind"]
    if kind == "none":
        return None
    if kind == "str":
        return "plain string"
    if kind == "set":
        return {1, 2}
    return {"kind": kind}
