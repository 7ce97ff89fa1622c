"""The HTTP service (``ofa-search serve``): :func:`~ofa_search.service.app.create_app` builds
the FastAPI app; :mod:`~ofa_search.service.exports` and :mod:`~ofa_search.service.queries`
run exports and cold queries off the request path; :mod:`~ofa_search.service.health` is the
health listener of ``--health-port``; :mod:`~ofa_search.service.process` starts a server in
a subprocess (benchmarks, tests)."""
