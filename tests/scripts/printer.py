import logging

log = logging.getLogger("user.script")


def init():
    print("printer init done")


def run(data):
    print("scoring", data)
    log.warning("user log line")
    return {"printed": data}
