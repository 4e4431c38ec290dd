"""A serving process raises the cyclic GC's threshold (outrider/grpc_runtime.py GC_THRESHOLD).

What requests leave alive (plan and token caches) is scanned by every young collection; Python's default
gen0 threshold (700, Python docs: gc.set_threshold) made a new rate limit plan cost about twice its own
work (bench/rls_profile.py). serve() sets the threshold once everything built at start is frozen.
"""

from __future__ import annotations

import asyncio
import gc

from outrider.grpc_runtime import GC_THRESHOLD, serve
from outrider.process import free_port


async def test_serve_sets_the_gc_threshold() -> None:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(lambda server: None, "127.0.0.1", free_port(), (), drain_grace_s=0.1,
                                     stop=stop))
    try:
        async with asyncio.timeout(10):
            while gc.get_threshold() != GC_THRESHOLD:  # set once the port is bound
                assert not task.done(), task
                await asyncio.sleep(0.01)
        assert GC_THRESHOLD[0] >= 10_000
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        gc.set_threshold(*before)
