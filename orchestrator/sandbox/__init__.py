"""A fake TikTok Content Posting API + Login Kit OAuth server, with fault injection.

Written from shared/TIKTOK_API.md alone and importing nothing else of ``orchestrator``, so
that the client and the fake cannot share one misunderstanding. Used by the demo, the tests
and the benchmarks; ``python -m orchestrator.sandbox --help`` runs it on its own.

How it is laid out (an arrow means "may import"):

    app (Sandbox) ──► server, state, clock, config
    cli ────────────► app, config, faults
    server ─────────► state, admin, faults, wire
    admin ──────────► state, wire
    state ──────────► accounts, publishing, faults, rules, wire, clock, config
    accounts, publishing ──► rules, config
    faults ─────────► rules
    rules, wire, clock, config ──► nothing

``rules`` holds the doc's numbers and validation as pure functions; ``accounts`` and
``publishing`` are the model (no I/O); ``state`` puts them behind one lock and decides each
endpoint's answer; ``server`` only moves bytes.
"""

from .app import Sandbox
from .cli import main
from .config import SandboxConfig

__all__ = ["Sandbox", "SandboxConfig", "main"]
