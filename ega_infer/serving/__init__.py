"""The serving layer above the engine: an in-process batching ``Server`` (the embedding API),
its result cache, the HTTP API (``http``: FastAPI, Prometheus metrics, catalog and weight
admin), the Ray Serve scale-out (``ray_serve``) and the load generator (``loadgen``).

It imports the engine; the engine never imports it. The HTTP, Ray and load-test modules import
their packages (fastapi, ray, httpx) only when used.
"""

from .cache import ResultCache
from .server import Server

__all__ = ["Server", "ResultCache"]
