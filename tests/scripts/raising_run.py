def init():
    pass


def run(data):
    raise ValueError("run() failed on purpose")
