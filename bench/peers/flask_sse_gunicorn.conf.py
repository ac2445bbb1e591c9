"""gunicorn settings for the flask-sse peer: the same limits sse_notify's gunicorn.conf.py sets.

Passed with ``-c`` so the repository's own gunicorn.conf.py (sse_notify hooks) is not read.
"""

import resource

# Each stream holds a client socket and a Redis connection: raise the open-files limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY:
    _hard = 65536
if _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

worker_class = "gevent"
# flask-sse streams never end on their own; shutdown waits this long for them.
graceful_timeout = 3
timeout = 30
