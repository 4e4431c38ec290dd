"""The JWKS sources: a polled file and a fetched URL, refreshed on a schedule and on demand (last good kept)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from ext_authz.jwks import JwksError, KeySet, RefreshGate, backoff_delay, parse_jwks

log = logging.getLogger(__name__)

# The longest wait between retries of a failing JWKS fetch (Envoy's jwt_authn retries a failed fetch
# after failed_refetch_duration, 1 s by default; we back off from 1 s to this).
MAX_RETRY_S = 30.0


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

    def seed(self, keys: KeySet) -> None:
        """Start from keys loaded before (the previous config version's, same file); load_now still reads."""
        self._current = keys
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

    def request_refresh(self) -> bool:
        """Unknown kid seen: re-read soon, at most once per cooldown (True when it woke the poller).

        Call from the event loop."""
        if self._gate.should_fetch(self._clock()):
            self._wake.set()
            return True
        return False

    async def run(self) -> None:
        """Poll until cancelled. File reads are small and local, so they run inline."""
        while True:
            await _wait_for_wake(self._wake, self._poll_interval_s)
            self.poll_once()


class JwksUrlSource:
    """Fetches a JWKS over HTTPS in the background, off the request path, keeping last good keys.

    Plain http:// only with allow_insecure (development only: anyone on the path could swap the keys).
    Redirects are never followed, to another host or the same: like Envoy's own JWKS fetcher
    (jwt_authn's jwks_fetcher.cc takes a 200 and nothing else), a 3xx is a failed fetch, so the
    keys only ever come from the configured URL. The body is capped at max_bytes, asked for and
    read unencoded (no gzip bomb), and the fetch is bounded by timeout_s.
    """

    def __init__(
        self,
        url: str,
        on_keys: Callable[[KeySet], None],
        refresh_interval_s: float = 300.0,
        cooldown_s: float = 30.0,
        timeout_s: float = 5.0,
        max_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
        retry_base_s: float = 1.0,
        allow_insecure: bool = False,
        retry_cap_s: float = MAX_RETRY_S,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme != "https" and not (scheme == "http" and allow_insecure):
            raise ValueError(f"{url}: a JWKS URL must be https:// (http:// only with allow_insecure, "
                             "DEVELOPMENT ONLY)")
        if scheme == "http":
            log.warning("JWKS %s is fetched over plain http (allow_insecure): DEVELOPMENT ONLY", url)
        self._url = url
        self._on_keys = on_keys
        self._refresh_interval_s = refresh_interval_s
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._retry_base_s = retry_base_s
        self._retry_cap_s = min(retry_cap_s, refresh_interval_s)
        self._gate = RefreshGate(cooldown_s)
        self._wake = asyncio.Event()
        self._current: KeySet | None = None
        self._fetches = 0
        self._fetched = asyncio.Condition()

    @property
    def current(self) -> KeySet | None:
        return self._current

    @property
    def fetches(self) -> int:
        """Fetch attempts finished so far (succeeded or not)."""
        return self._fetches

    async def wait_fetches(self, count: int) -> None:
        """Until `count` fetch attempts have finished (a readiness poll for tests, no fixed sleeps)."""
        async with self._fetched:
            await self._fetched.wait_for(lambda: self._fetches >= count)

    def seed(self, keys: KeySet) -> None:
        """Start from keys fetched before (the previous config version's, same URL); a failed fetch keeps them."""
        self._current = keys
        self._on_keys(keys)

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        if 300 <= response.status < 400:
            location = response.headers.get("location", "")
            raise JwksError(f"{self._url}: HTTP {response.status} redirect to {location[:200]!r} not followed "
                            "(configure the final URL)")
        if response.status != 200:
            raise JwksError(f"{self._url}: HTTP {response.status}")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise JwksError(f"{self._url}: Content-Encoding {encoding[:40]!r} refused (asked for identity)")
        if response.content_length is not None and response.content_length > self._max_bytes:
            raise JwksError(f"{self._url}: JWKS larger than {self._max_bytes} bytes "
                            f"(Content-Length {response.content_length})")
        body = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            body += chunk
            if len(body) > self._max_bytes:
                raise JwksError(f"{self._url}: JWKS larger than {self._max_bytes} bytes")
        return bytes(body)

    async def _fetch(self) -> KeySet:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        try:
            # A session per fetch: fetches are minutes apart, and nothing outlives run(). No proxy from
            # the environment (trust_env=False), no redirects, no decompression.
            async with (
                aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=False) as session,
                session.get(self._url, allow_redirects=False, headers={"accept-encoding": "identity"}) as response,
            ):
                body = await self._read_body(response)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JwksError(f"{self._url}: fetch failed: {exc!r}") from None
        try:
            return parse_jwks(bytes(body))
        except JwksError as exc:
            raise JwksError(f"{self._url}: {exc}") from None

    async def fetch_once(self) -> bool:
        """Fetch now; deliver changed keys. Return False (logged) on failure, keeping last good keys."""
        try:
            return await self._fetch_and_apply()
        finally:
            self._fetches += 1
            async with self._fetched:
                self._fetched.notify_all()

    async def _fetch_and_apply(self) -> bool:
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

    def request_refresh(self) -> bool:
        """Unknown kid seen: wake the fetch loop unless a fetch happened within cooldown (True when woken).

        Never blocks. Must be called from the event loop thread that runs run().
        """
        if self._gate.should_fetch(self._clock()):
            self._wake.set()
            return True
        return False

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
                # Capped well below the refresh interval: a provider without keys keeps the service
                # NOT_SERVING, so the retries must not drift minutes apart.
                delay = backoff_delay(failures, self._retry_base_s, self._retry_cap_s)
