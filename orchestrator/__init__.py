"""orchestrator: a daemon that posts videos to many TikTok accounts, durably.

How the package is laid out (an arrow means "may import"):

    cli ──────────────► client (HTTP over the Unix socket), config, catalog, crypto, render
    daemon ───────────► everything below; the only module that wires parts together
    api, webhooks ────► store, tokens, intake, oauth, catalog, httpd, errors
    shard, poller ────► tiktok, tokens, retries, limits, store, clock, errors
    retries ──────────► catalog, backoff, store (the policy after a failure)
    refresher ────────► tokens (APScheduler timers that only enqueue work)
    metrics ──────────► store, httpd, health, caps (reads the daemon through a Protocol)
    tokens ───────────► tiktok, store, crypto, catalog, clock, errors
    tiktok ───────────► errors            (the only module that speaks HTTP to TikTok)
    store, schema ────► errors            (the only modules that speak SQL)
    catalog, backoff, jobs, intake, oauth, crypto: pure, or nearly (no I/O but a key file)
    httpd ────────────► errors, logs (config for types only)
    config, clock, logs, notify, errors ─► nothing of ours (notify: sd_notify)
    sandbox/ ─────────► nothing of ours, ever: it is written from shared/TIKTOK_API.md alone,
                        so that the client and the fake cannot share one misunderstanding.

Pure decisions (chunk plans, idempotency keys, state transitions) are plain functions over
plain values; I/O lives in the async shell around them.
"""

__version__ = "0.1.0"
