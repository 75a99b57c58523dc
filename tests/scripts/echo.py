"""Echo: returns the raw body string, as Azure ML echo samples do."""


def init():
    print("echo init done")


def run(data):
    return data
