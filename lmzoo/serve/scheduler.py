"""The engine loop, off the event loop: one thread owns the Engine and steps it; HTTP handlers hand
it requests and receive the engine's events on per-request asyncio queues.

Run it on the process's main thread when you can (`lmzoo serve` does, with uvicorn on a side
thread): PyTorch's and the kernels' OpenMP parallel regions are 3-10x slower when launched from a
secondary thread (measured here: a 64x64 mm 7 us on the main thread, 176 us on another).

    handler --submit()--> [lock] engine.submit  (validation errors raise in the handler's thread)
    thread: while running: engine.step() -> events -> loop.call_soon_threadsafe(queue.put_nowait, ev)
    handler <--events--  async for ev in stream   (a disconnect calls cancel(): gone at the next step)

The queue is bounded: with `max_queued` requests already waiting for a slot, submit raises QueueFull
(the server answers 429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import threading

from lmzoo.runtime.engine import Engine, Event, Request


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


def _deliver(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for q, ev in items:
        q.put_nowait(ev)


class EngineLoop:
    def __init__(self, engine: Engine, *, max_queued: int = 64, thread: bool = True, metrics=None) -> None:
        """thread=False: the caller runs `run()` itself (on the main thread). metrics: a
        lmzoo.serve.metrics.ServerMetrics fed from the engine thread."""
        self.engine, self.max_queued, self.metrics = engine, max_queued, metrics
        if metrics is not None:
            metrics.watch(lambda: self.counts)
        self._lock = threading.Lock()  # engine.submit/cancel vs engine.step
        self._wake = threading.Event()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = False
        self._draining = False
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self.run, name="lmzoo-engine", daemon=True)
            self._thread.start()

    # --- called from handler threads ----------------------------------------------------------------
    def submit(self, req: Request, loop: asyncio.AbstractEventLoop) -> tuple[str, asyncio.Queue]:
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self._draining:
                raise ShuttingDown("the server is shutting down")
            if len(self.engine.waiting) >= self.max_queued:
                raise QueueFull(f"{len(self.engine.waiting)} requests are already waiting (max_queued={self.max_queued})")
            rid = self.engine.submit(req)
            self._queues[rid] = (loop, q)
            if self.metrics is not None:
                self.metrics.submitted(rid)
        self._wake.set()
        return rid, q

    def cancel(self, rid: str) -> None:
        with self._lock:
            if rid in self._queues:
                self.engine.cancel(rid)
        self._wake.set()

    @property
    def counts(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        return len(self.engine.running), len(self.engine.waiting)

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Refuse new requests; `run()` returns once the running and queued ones have finished."""
        self._draining = True
        self._wake.set()

    def close(self) -> None:
        """Stop stepping (from any thread or a signal handler); joins the loop's own thread."""
        self._stop = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # --- the engine thread ---------------------------------------------------------------------------
    def run(self) -> None:
        while not self._stop and not (self._draining and not self.engine.has_work and not self._queues):
            with self._lock:
                busy = self.engine.has_work
                try:
                    events: list[Event] = self.engine.step() if busy else []
                except Exception as e:  # a fault inside the model: fail the requests, keep serving
                    events = []
                    targets = list(self._queues.values())
                    if self.metrics is not None:
                        self.metrics.failed(list(self._queues))
                    self._queues.clear()
                    self.engine.cancel_all()
                    self.engine.step()  # retire them
                    for loop, q in targets:
                        loop.call_soon_threadsafe(q.put_nowait, e)
                    continue
                targets = [(ev, self._queues.get(ev.request_id)) for ev in events]
                if self.metrics is not None and events:
                    self.metrics.events(events)
                for ev in events:
                    if ev.finish_reason is not None:
                        self._queues.pop(ev.request_id, None)
            # one wake-up per event loop per step (not per event): fewer GIL hand-offs mid-step
            per_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for ev, target in targets:
                if target is not None:
                    per_loop.setdefault(target[0], []).append((target[1], ev))
            for loop, items in per_loop.items():
                loop.call_soon_threadsafe(_deliver, items)
            if not busy:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
