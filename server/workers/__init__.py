"""The worker pool, and the worker processes it runs.

In the HTTP process:

* :mod:`.pool`        dispatch: a call takes a slot, goes to a worker, and is answered by
                      the reply or by its deadline;
* :mod:`.supervision` spawn, watch, restart and kill the worker processes;
* :mod:`.admission`   the bounded wait queue for slots.

In each worker process (``python -m server.workers.main``):

* :mod:`.main`        load the entry script or the model store, then serve calls.

Shared by both sides:

* :mod:`.protocol`    every message that crosses the socket, typed;
* :mod:`.writer`      the coalescing writer: what is written in one loop iteration leaves
                      in one system call.

Nothing here imports Starlette or uvicorn.
"""
