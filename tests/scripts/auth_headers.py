def init():
    pass


def run(data, request_headers):
    # Which request headers reach user code (tests/test_auth.py: never the Authorization header).
    return {"headers": sorted(k.lower() for k in request_headers), "values": list(dict(request_headers).values())}
