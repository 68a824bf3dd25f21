"""``flush`` and ``close`` for asyncio code: awaited without blocking the event loop.

``send_odp_event`` needs nothing of the kind: it never blocks (it validates the event and
appends it to a queue), so an ``async def`` route calls it directly. Only ``flush`` and
``close`` wait for the network; here each runs on a thread of its own while the loop keeps
serving, and the awaiting coroutine resumes when it returns.

Cancelling the ``await`` (a request timeout, ``asyncio.wait_for``, a shutdown) stops the
waiting, not the work: the thread goes on until the call returns, which it does within its
own ``timeout``. For ``flush`` that is harmless (events are delivered in the background
either way). For ``close`` the client is closed all the same; awaiting ``close_async``
again waits for that same close to finish. The threads are daemons and are not the loop's
default executor, so ``asyncio.run`` never waits for them at exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from typing import Any, Callable, Protocol, TypeVar

__all__ = ["close_async", "flush_async"]

T = TypeVar("T")


class Flushable(Protocol):
    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self, timeout: float | None = None) -> Any: ...


_closing: weakref.WeakKeyDictionary[Any, concurrent.futures.Future[Any]] = weakref.WeakKeyDictionary()
_closing_lock = threading.Lock()


async def flush_async(client: Flushable, timeout: float | None = None) -> bool:
    """Await ``client.flush(timeout)`` without blocking the event loop.

    Returns True when everything accepted before the call was delivered or finally
    resolved within ``timeout`` seconds (None: the client's default bound). Cancelling the await
    returns at once; the flush keeps waiting on its thread until it is done or its timeout
    runs out, and delivery goes on in the background as always. Thread-safe.
    """
    return bool(await _await(_in_thread(lambda: client.flush(timeout), "odp-flush-async")))


async def close_async(client: Flushable, timeout: float | None = None) -> None:
    """Await ``client.close(timeout)`` without blocking the event loop.

    Delivers what was accepted (within ``timeout`` seconds; None: the manager's
    ``close_timeout``), then stops the client. Cancelling the await returns at once but does
    not undo the close: it goes on, on its thread, within ``timeout``; a later
    ``close_async`` of the same client waits for that close to finish. Thread-safe.
    """
    with _closing_lock:
        closing = _closing.get(client)
        if closing is None:
            closing = _closing[client] = _in_thread(lambda: client.close(timeout), "odp-close-async")
    await _await(closing)


def _in_thread(call: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
    """Run ``call`` on a new daemon thread; its outcome in a future that cannot be cancelled."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()  # running: cancel() is refused from now on

    def run() -> None:
        try:
            result = call()
        except BaseException as error:  # handed to the awaiting coroutine
            future.set_exception(error)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def _await(future: concurrent.futures.Future[T]) -> T:
    """Await a thread's future on the running loop; cancelling the await leaves it running."""
    return await asyncio.wrap_future(future)
