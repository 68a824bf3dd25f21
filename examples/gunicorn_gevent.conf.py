"""gunicorn with gevent workers for examples/flask_app.py, preloaded: monkey-patch in the master.

Run from the repository root (``pip install flask gunicorn gevent``; a collector in another
terminal: ``optimizely-odp collector --port 8090 --api-key example-key``):

    ODP_EXAMPLE_COLLECTOR_URL=http://127.0.0.1:8090 gunicorn -c examples/gunicorn_gevent.conf.py
    curl 'http://127.0.0.1:8000/buy?user=ada'

gunicorn's gevent worker monkey-patches in each worker, after the fork. With ``preload_app``
the app, and its ``OdpOptimizely``, were built in the master before that, with the
standard library's locks and queues. Patching here, at the top of the config file that the
master reads first, makes every lock green from the start, as gevent asks ("patch as
early as possible"). See the README, "gevent and eventlet".
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before flask_app, optimizely and requests are imported

import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

wsgi_app = "flask_app:app"
pythonpath = HERE
bind = os.environ.get("ODP_EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gevent"
preload_app = True
graceful_timeout = 30
control_socket_disable = True  # gunicorn >= 26 control socket: not needed here (older versions ignore it)
CLOSE_TIMEOUT = min(float(os.environ.get("ODP_EXAMPLE_CLOSE_TIMEOUT", "10")), graceful_timeout - 5)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it exits: deliver what it accepted, then stop its client."""
    module = sys.modules.get("flask_app")
    if module is not None:
        module.close_client(CLOSE_TIMEOUT)
