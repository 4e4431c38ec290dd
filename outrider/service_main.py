"""The command-line entry and task housekeeping every outrider service shares."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from outrider.config import ConfigError, GatewayConfig, load_config
from outrider.logs import setup_logging

RunService = Callable[[GatewayConfig, Path], Coroutine[Any, Any, None]]


def service_main(name: str, description: str, run: RunService, argv: list[str] | None = None) -> None:
    """`python -m <name> --config FILE`: load the config (exit with its errors), log JSON, run on uvloop."""
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    path = Path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    setup_logging(name, config.logging.level)
    import uvloop

    uvloop.run(run(config, path))


async def cancel_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel background tasks and wait until each has finished."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
