"""Echo entry script: the cheapest possible run(), so a benchmark measures the server itself."""


def init() -> None:
    pass


def run(data: str) -> str:
    return data
