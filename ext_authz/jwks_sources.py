"""The JWKS sources: a polled file and a fetched URL, refreshed on a schedule and on demand (last good kept)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from ext_authz.jwks import JwksError, KeySet, RefreshGate, backoff_delay, parse_jwks

log = logging.getLogger(__name__)


async def _wait_for_wake(wake: asyncio.Event, timeout_s: float) -> None:
    """Sleep until timeout_s passes or someone sets `wake`; leave `wake` cleared for the next round."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=timeout_s)
    wake.clear()


def _log_skipped(source: str, keys: KeySet) -> None:
    for reason in keys.skipped:
        log.warning("JWKS %s: skipped key: %s", source, reason)


class JwksFileSource:
    """Polls a JWKS file and hands changed key sets to on_keys; a bad rewrite keeps the last good keys."""

    def __init__(
        self,
        path: Path,
        on_keys: Callable[[KeySet], None],
        poll_interval_s: float = 1.0,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(path)
        self._on_keys = on_keys
        self._poll_interval_s = poll_interval_s
        self._gate = RefreshGate(cooldown_s)
        self._clock = clock
        self._wake = asyncio.Event()
        self._last_raw_digest: bytes | None = None
        self._current: KeySet | None = None

    @property
    def current(self) -> KeySet | None:
        return self._current

    def _read(self) -> tuple[bytes, bytes]:
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            raise JwksError(f"{self._path}: cannot read JWKS file: {exc}") from None
        return raw, hashlib.sha256(raw).digest()

    def _apply(self, keys: KeySet) -> None:
        changed = self._current is None or keys.fingerprint != self._current.fingerprint
        self._current = keys
        if changed:
            _log_skipped(str(self._path), keys)
            self._on_keys(keys)

    def load_now(self) -> KeySet:
        """Synchronous first load; raises JwksError (with the file name) on a bad file."""
        raw, digest = self._read()
        try:
            keys = parse_jwks(raw)
        except JwksError as exc:
            raise JwksError(f"{self._path}: {exc}") from None
        self._last_raw_digest = digest
        self._gate.record(self._clock())
        self._apply(keys)
        return keys

    def poll_once(self) -> bool:
        """Re-read the file; return True if a new key set was delivered."""
        try:
            raw, digest = self._read()
        except JwksError as exc:
            log.warning("%s; keeping last good keys", exc)
            return False
        if digest == self._last_raw_digest:
            return False
        # Remember even a bad content's digest so one broken file logs one warning, not one per poll.
        self._last_raw_digest = digest
        try:
            keys = parse_jwks(raw)
        except JwksError as exc:
            log.warning("%s: %s; keeping last good keys", self._path, exc)
            return False
        before = self._current.fingerprint if self._current else None
        self._apply(keys)
        return keys.fingerprint != before

    def request_refresh(self) -> None:
        """Unknown kid seen: re-read soon, at most once per cooldown. Call from the event loop."""
        if self._gate.should_fetch(self._clock()):
            self._wake.set()

    async def run(self) -> None:
        """Poll until cancelled. File reads are small and local, so they run inline."""
        while True:
            await _wait_for_wake(self._wake, self._poll_interval_s)
            self.poll_once()


class JwksUrlSource:
    """Fetches a JWKS over HTTP(S) in the background, off the request path, keeping last good keys."""

    def __init__(
        self,
        url: str,
        on_keys: Callable[[KeySet], None],
        refresh_interval_s: float = 300.0,
        cooldown_s: float = 30.0,
        timeout_s: float = 5.0,
        max_bytes: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
        retry_base_s: float = 1.0,
    ) -> None:
        self._url = url
        self._on_keys = on_keys
        self._refresh_interval_s = refresh_interval_s
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._retry_base_s = retry_base_s
        self._gate = RefreshGate(cooldown_s)
        self._wake = asyncio.Event()
        self._current: KeySet | None = None

    @property
    def current(self) -> KeySet | None:
        return self._current

    async def _fetch(self) -> KeySet:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        try:
            # A session per fetch: fetches are minutes apart, and nothing outlives run().
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self._url, max_redirects=3) as response,
            ):
                if response.status != 200:
                    raise JwksError(f"{self._url}: HTTP {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise JwksError(f"{self._url}: JWKS larger than {self._max_bytes} bytes")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JwksError(f"{self._url}: fetch failed: {exc!r}") from None
        try:
            return parse_jwks(bytes(body))
        except JwksError as exc:
            raise JwksError(f"{self._url}: {exc}") from None

    async def fetch_once(self) -> bool:
        """Fetch now; deliver changed keys. Return False (logged) on failure, keeping last good keys."""
        self._gate.record(self._clock())
        try:
            keys = await self._fetch()
        except JwksError as exc:
            log.warning("%s; keeping last good keys", exc)
            return False
        except Exception:
            # The refresh loop must survive anything: a dead loop would freeze key rotation.
            log.exception("%s: unexpected JWKS fetch error; keeping last good keys", self._url)
            return False
        if self._current is None or keys.fingerprint != self._current.fingerprint:
            _log_skipped(self._url, keys)
            self._current = keys
            self._on_keys(keys)
        return True

    async def load_now(self) -> KeySet | None:
        """First fetch (also delivered to on_keys); None on failure so the service can start and retry."""
        await self.fetch_once()
        return self._current

    def request_refresh(self) -> None:
        """Unknown kid seen: wake the fetch loop unless a fetch happened within cooldown. Never blocks.

        Must be called from the event loop thread that runs run().
        """
        if self._gate.should_fetch(self._clock()):
            self._wake.set()

    async def run(self) -> None:
        """Refresh every refresh_interval_s (sooner on request); back off after failures. Until cancelled."""
        failures = 0
        delay = self._refresh_interval_s if self._current is not None else 0.0
        while True:
            await _wait_for_wake(self._wake, delay)
            if await self.fetch_once():
                failures = 0
                delay = self._refresh_interval_s
            else:
                failures += 1
                delay = backoff_delay(failures, self._retry_base_s, self._refresh_interval_s)
