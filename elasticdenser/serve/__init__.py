"""Serving under load: measure every point, route each batch, serve over HTTP, simulate the load.

- :mod:`.profile`: the measured latency / quality table of every point, stored in the manifest.
- :mod:`.measure`: measuring that table on this machine.
- :mod:`.router`: :class:`~.router.Router`, the point for the next batch from QPS, queue and SLO.
- :mod:`.service`: :class:`~.service.RoutedSearcher`, the batcher between requests and the router.
- :mod:`.server`: the FastAPI app (``POST /search``, ``GET /health``, ``GET /metrics``).
- :mod:`.traces`: load traces (constant, ramp, steps, NHPP, from a file).
- :mod:`.simulate`: the load simulator (discrete-event, driven by the profile).
- :mod:`.replay`: real runs of a trace, in process or over HTTP, reported like the simulation.
"""
