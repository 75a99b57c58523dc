"""The HTTP process: everything that speaks HTTP, and nothing that runs user code.

* :mod:`.server`     binds the socket, runs uvicorn, orders the shutdown;
* :mod:`.app`        the route and middleware lists (Starlette);
* :mod:`.handlers`   parse a request, call the worker pool, render the reply;
* :mod:`.probes`     liveness and readiness answers, instant whatever the workers do;
* :mod:`.responses`  pre-encoded responses and the one renderer of errors;
* :mod:`.swagger`    the generated OpenAPI document;
* :mod:`.connection` uvicorn's httptools protocol with one write per response.

Only this package may import Starlette or uvicorn (ruff's banned-api rule enforces it).
"""
