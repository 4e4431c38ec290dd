"""Templates (`${uuid()}`, `${now()}`, `${client_ip}`, `${request_id}`, `${response_time_ms}`) compiled once."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ext_proc.config import TemplatePart, parse_template


@dataclass(frozen=True, slots=True)
class Context:
    """What a template can see: wall time (epoch seconds) and what the request told us."""

    now: float
    client_ip: str = ""
    request_id: str = ""
    response_time_ms: int = 0


def iso_time(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds: 2026-01-31T12:00:00.123Z."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_VARS: dict[str, Callable[[Context], str]] = {
    "uuid()": lambda _ctx: str(uuid.uuid4()),
    "now()": lambda ctx: iso_time(ctx.now),
    "client_ip": lambda ctx: ctx.client_ip,
    "request_id": lambda ctx: ctx.request_id,
    "response_time_ms": lambda ctx: str(ctx.response_time_ms),
}


class Template:
    """A parsed template; a literal one renders without a call per part."""

    __slots__ = ("_getters", "_literal", "_parts", "source")

    def __init__(self, source: str, allowed: frozenset[str]) -> None:
        self.source = source
        parts: tuple[TemplatePart, ...] = parse_template(source, allowed)
        self._literal: str | None = "".join(v for _, v in parts) if all(k == "text" for k, _ in parts) else None
        self._parts = parts
        self._getters: tuple[tuple[str, Callable[[Context], str] | None], ...] = tuple(
            (v, None) if k == "text" else ("", _VARS[v]) for k, v in parts)

    @property
    def literal(self) -> str | None:
        return self._literal

    def render(self, ctx: Context) -> str:
        if self._literal is not None:
            return self._literal
        return "".join(text if getter is None else getter(ctx) for text, getter in self._getters)
