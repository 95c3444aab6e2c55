"""orchestrator: a daemon that posts videos to many TikTok accounts, durably.

How the package is laid out (an arrow means "may import"):

    cli ──────────────► api (client side only: HTTP over the Unix socket), config, errors
    daemon ───────────► everything below; the only module that wires parts together
    api ──────────────► store, shard/poller snapshots, httpd, errors
    shard, poller ────► tiktok, store, tokens, clock, errors
    tokens ───────────► tiktok, store, clock, errors
    tiktok ───────────► errors            (the only module that speaks HTTP to TikTok)
    store ────────────► errors            (the only module that speaks SQL)
    config, clock, httpd, logs, errors ─► nothing of ours
    sandbox/ ─────────► nothing of ours, ever: it is written from shared/TIKTOK_API.md alone,
                        so that the client and the fake cannot share one misunderstanding.

Pure decisions (chunk plans, idempotency keys, state transitions) are plain functions over
plain values; I/O lives in the async shell around them.
"""

__version__ = "0.1.0"
