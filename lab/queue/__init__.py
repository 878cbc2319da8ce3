"""The run queue: a persistent list of experiments to run, shared by runners, sweeps and the console.

:mod:`lab.queue.store` holds the file format and the locked edits,
:mod:`lab.queue.runner` the loop that runs entries (as ``lab run`` processes started by
:mod:`lab.processes`), :mod:`lab.queue.validate` the up-front checks.
"""

from lab.queue.store import FINISHED, STATUSES, QueueEntry, QueueError, QueueStore  # noqa: F401
