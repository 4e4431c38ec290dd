"""The services' JSON log lines carry the request id of the request being handled (outrider/logs.py)."""

from __future__ import annotations

import asyncio
import json
import logging

from outrider.logs import REQUEST_ID, JsonFormatter


def line(message: str) -> dict[str, object]:
    record = logging.LogRecord("svc", logging.WARNING, __file__, 1, message, None, None)
    parsed: dict[str, object] = json.loads(JsonFormatter("svc").format(record))
    return parsed


def test_a_line_carries_the_request_id_of_its_task_only() -> None:
    async def handle(request_id: str) -> dict[str, object]:
        REQUEST_ID.set(request_id)
        await asyncio.sleep(0)  # another request's task runs in between
        return line("cache get failed")

    async def main() -> list[dict[str, object]]:
        return list(await asyncio.gather(handle("req-1"), handle("req-2")))

    first, second = asyncio.run(main())
    assert (first["request_id"], second["request_id"]) == ("req-1", "req-2")
    assert "request_id" not in line("outside any request")
