"""The sandbox's one configuration value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxConfig:
    """How the fake TikTok behaves. Every duration is in simulated seconds.

    ``epoch`` and ``time_scale`` define the simulated clock (see ``clock.py``); pass the same
    two numbers to another process and it computes the same simulated time.
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0: an ephemeral port, read it back from Sandbox.base_url
    time_scale: float = 1.0
    epoch: float | None = None  # None: time.time() when the Sandbox is built
    client_key: str = "sbx-client-key"
    client_secret: str = "sbx-client-secret"
    access_ttl: int = 7200  # 2 h, the Nov-2026 docs (§1.2)
    refresh_ttl: int = 180 * 86400  # 180 days, fixed from the first grant
    processing_seconds: float = 20.0  # upload complete / pull start -> final status
    daily_cap: int = 15  # direct posts per creator per rolling 24 h (§3, "around 15")
    rate_limits: bool = True  # per-token per-endpoint limits (§3)
    seed: int = 0  # ids, tokens and probabilistic faults
    # The HTTP status of the sandbox's own OAuth errors. Field reports say TikTok sends 200
    # (§1.2, UNVERIFIED); 400 is the OAuth 2.0 norm. Faults can pick either per request.
    oauth_error_status: int = 400

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be positive, not {self.time_scale!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port!r}")
        if self.access_ttl <= 0 or self.refresh_ttl <= 0:
            raise ValueError("access_ttl and refresh_ttl must be positive")
        if self.processing_seconds < 0:
            raise ValueError("processing_seconds must not be negative")
        if self.daily_cap < 0:
            raise ValueError("daily_cap must not be negative")
        if self.oauth_error_status not in (200, 400):
            raise ValueError("oauth_error_status must be 200 or 400")
        if not self.client_key or not self.client_secret:
            raise ValueError("client_key and client_secret must not be empty")
