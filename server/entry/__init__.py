"""The entry-script host: runs inside a worker process, knows nothing of HTTP.

* :mod:`.script` loads ``score.py``, calls ``init()`` once and ``run()`` per call;
* :mod:`.aml`    ``AMLRequest``, ``AMLResponse`` and ``@rawhttp`` (public as ``server.aml``);
* :mod:`.compat` makes the reference server's import paths resolve to :mod:`.aml`.
"""
