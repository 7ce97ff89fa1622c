"""The main job (``ofa-search demo``): :func:`~ofa_search.demo.run.run_demo`, and the plot
of its front (:mod:`ofa_search.demo.plot`)."""
