def init():
    raise RuntimeError("boom in init")


def run(data):
    return data
