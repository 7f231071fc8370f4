"""Flower's configuration file (`celery flower --conf=scripts/flowerconfig.py`).

Flower 2.2 checks its login (FLOWER_BASIC_AUTH) on every page and API route except two:
`/metrics` (Prometheus: Python version, worker names, task counts) and `/healthcheck`. It has
no option to change that, so this file, which Flower executes at start-up, puts those two
behind the same login. Flower reads every top-level name here as an option of that name,
which is why the only names left behind start with an underscore."""

from flower.views import monitor as _monitor
from tornado.web import authenticated as _authenticated

for _handler in (_monitor.Metrics, _monitor.Healthcheck):
    if not getattr(_handler.get, "__wrapped__", None):  # once, even if read twice
        _handler.get = _authenticated(_handler.get)
