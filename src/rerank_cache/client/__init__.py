"""The DashScope edge: the only place that sends rerank requests.

Modules, each importing only those listed before it (and ``errors``, ``planning``,
``ratelimit``):

- ``results``: :class:`BatchResult`, :class:`ScoreResult`, :class:`UsageTotals`, what a
  request and a call return. A leaf: protocols and the caching layer import it without the
  client or the SDK.
- ``retry``: :class:`RetryPolicy`, ``parse_retry_after`` and ``Attempts``, which decides
  each attempt's timeout, each wait (backoff, ``Retry-After``, ``max_rpm``) and when to
  give up.
- ``responses``: validation of a response (``check``) and the two tables that map an
  error status and an exception from the SDK to our errors, retryable or not.
- ``sdk``: the sync path's connection pool, preparing the async SDK, and
  ``close_async_sessions``.
- ``core``: :class:`DashScopeClient` (fan-out, concurrency, the sync and async send
  loops, usage counting), ``DEFAULT_BASE_URL`` and ``DEFAULT_MAX_CONCURRENCY``.

This file imports nothing, so importing ``rerank_cache.client.results`` never imports the
client or the SDK. Public names are imported from ``rerank_cache``.
"""
