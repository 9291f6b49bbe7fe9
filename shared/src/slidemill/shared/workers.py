"""Worker processes, one way for every tool: a process pool whose abrupt end is a paragraph the
user can act on (`WorkerError`, exit 2), and results in order with a bounded number in flight."""

from __future__ import annotations

import collections
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import WorkerError


@contextlib.contextmanager
def worker_pool(workers: int, context, initializer: Callable, initargs: tuple, *, what: str
                ) -> Iterator[ProcessPoolExecutor]:
    """A `ProcessPoolExecutor` of `workers` processes started by the multiprocessing `context`.
    A worker that dies (SIGKILL, the kernel's out-of-memory killer, a crash in native code, or an
    error while it starts) breaks the pool: that is raised as `WorkerError` naming `what`, with the
    way to see the real cause (one worker, in this process)."""
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer,
                                 initargs=initargs) as pool:
            yield pool
    except BrokenProcessPool as exc:
        raise WorkerError(_broken_pool_paragraph(what)) from exc


def _broken_pool_paragraph(what: str) -> str:
    text = (f"a worker process {what} ended abruptly (killed, out of memory, or it failed while starting); "
            "rerun with --workers 1 (workers=1 from Python) to do the work in this process and see the cause")
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    name = os.path.basename(script or "")
    if script and not name.startswith("slidemill") and name != "__main__.py" and "site-packages" not in script:
        # a user's script: spawn and forkserver workers import it again, running any unguarded call
        text += (f". If {script} calls slidemill with workers, the call must sit under "
                 "`if __name__ == \"__main__\":`, since every worker process imports that script again "
                 "(Python's spawn and forkserver start methods)")
    return text


def bounded_map(pool: ProcessPoolExecutor, fn: Callable, items: Iterable, in_flight: int, *args) -> Iterator[Any]:
    """`fn(*args, item)` for each item, results in order, with at most `in_flight` submitted at once
    (so memory stays bounded by what a task holds times `in_flight`)."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, *args, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
