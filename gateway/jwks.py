"""Signing keys from a JWKS URL, for RS*/ES*/PS* tokens issued by an identity provider.

PyJWT's `PyJWKClient` does the fetching and parsing; it is synchronous, so
every fetch runs in a worker thread and the event loop never waits on the
network. Keys are cached by `kid`. A token naming an unknown `kid` (a key
rotated in, or a forgery) triggers a refetch, but at most one per
`min_refresh` seconds, whoever asks and however many kids they invent: a
flood of made-up kids costs one HTTP request per interval, not one per token.
"""

from __future__ import annotations

import asyncio
import logging
import time

from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientError, PyJWKSetError

logger = logging.getLogger(__name__)
FETCH_TIMEOUT = 5.0


class JwksKeys:
    """The key set behind a JWKS URL; `get` is synchronous (cache only), `refresh` fetches."""

    def __init__(self, url: str, *, ttl: float, min_refresh: float) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refresh = min_refresh
        self.fetches = 0
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=FETCH_TIMEOUT)
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at = float("-inf")   # last successful fetch
        self._tried_at = float("-inf")     # last attempt, successful or not
        self._lock = asyncio.Lock()

    def get(self, kid: str | None) -> PyJWK | None:
        """The cached key for `kid`; a token without `kid` may use a set of one key."""
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        return key

    def needs_refresh(self, kid: str | None) -> bool:
        """Whether `kid` is unknown or the set is older than `ttl`."""
        return self.get(kid) is None or time.monotonic() - self._fetched_at > self.ttl

    async def ensure(self, kid: str | None) -> None:
        """Refetch if `kid` is unknown or the set is stale, unless one was tried in the last `min_refresh` s."""
        if not self.needs_refresh(kid):
            return
        async with self._lock:  # one fetch at a time; waiters then find its result
            if not self.needs_refresh(kid) or time.monotonic() - self._tried_at < self.min_refresh:
                return
            self._tried_at = time.monotonic()
            await self._fetch()

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            jwk_set = await asyncio.to_thread(self._client.get_jwk_set, True)
        except (PyJWKClientError, PyJWKSetError) as error:
            # Keep the keys we had: an identity provider's outage must not log everyone out.
            logger.warning("could not fetch the JWKS at %s: %s", self.url, error)
            return
        self._keys = {key.key_id: key for key in jwk_set.keys}
        self._fetched_at = time.monotonic()
        logger.info("fetched %s signing keys from the JWKS at %s", len(self._keys), self.url)
