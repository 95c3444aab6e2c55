"""The database schema, as numbered migrations. Append only: never edit a released step.

``PRAGMA user_version`` holds the number of the last step applied; each step runs in its own
transaction together with the bump of that number, so a crash mid-migration leaves the
database at the previous version, never in between.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, their attempts and timeline, tokens.
    """
    CREATE TABLE jobs (
        id                TEXT PRIMARY KEY,
        idempotency_key   TEXT NOT NULL UNIQUE,
        payload_sha256    TEXT NOT NULL,
        account_id        TEXT NOT NULL,
        mode              TEXT NOT NULL,
        source            TEXT NOT NULL,
        video_path        TEXT,
        video_url         TEXT,
        video_size        INTEGER,
        content_sha256    TEXT NOT NULL,
        caption           TEXT NOT NULL,
        privacy_level     TEXT,
        options           TEXT NOT NULL DEFAULT '{}',
        lane              TEXT NOT NULL DEFAULT 'new',
        state             TEXT NOT NULL,
        not_before        REAL NOT NULL,
        attempt_count     INTEGER NOT NULL DEFAULT 0,
        publish_id        TEXT,
        upload_url        TEXT,
        upload_expires_at REAL,
        chunk_size        INTEGER,
        chunk_count       INTEGER,
        uploaded_bytes    INTEGER NOT NULL DEFAULT 0,
        init_sent_at      REAL,
        next_poll_at      REAL,
        post_ids          TEXT NOT NULL DEFAULT '[]',
        post_url          TEXT,
        error_code        TEXT,
        error_message     TEXT,
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL,
        finished_at       REAL
    );
    CREATE INDEX jobs_by_account ON jobs (account_id, state, lane, not_before);
    CREATE INDEX jobs_by_state ON jobs (state, next_poll_at);
    CREATE UNIQUE INDEX jobs_by_publish_id ON jobs (publish_id) WHERE publish_id IS NOT NULL;

    CREATE TABLE attempts (
        id             INTEGER PRIMARY KEY,
        job_id         TEXT,
        account_id     TEXT NOT NULL,
        step           TEXT NOT NULL,
        started_at     REAL NOT NULL,
        finished_at    REAL,
        outcome        TEXT,
        http_status    INTEGER,
        error_code     TEXT,
        error_message  TEXT,
        log_id         TEXT,
        raw            TEXT
    );
    CREATE INDEX attempts_by_job ON attempts (job_id, id);

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        job_id      TEXT NOT NULL,
        at          REAL NOT NULL,
        from_state  TEXT,
        to_state    TEXT,
        action      TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_by_job ON events (job_id, id);

    CREATE TABLE tokens (
        account_id          TEXT PRIMARY KEY,
        open_id             TEXT,
        access_token        TEXT,
        access_expires_at   REAL,
        refresh_token       TEXT,
        refresh_expires_at  REAL,
        scopes              TEXT NOT NULL DEFAULT '',
        state               TEXT NOT NULL DEFAULT 'valid',
        imported_sha256     TEXT,
        last_error          TEXT,
        updated_at          REAL NOT NULL
    );
    """,
    # 2: what we made of each failure, content rejections per asset, unknown codes.
    """
    ALTER TABLE attempts ADD COLUMN error_class TEXT;
    ALTER TABLE attempts ADD COLUMN known INTEGER;

    CREATE TABLE rejections (
        id              INTEGER PRIMARY KEY,
        account_id      TEXT NOT NULL,
        content_sha256  TEXT NOT NULL,
        code            TEXT NOT NULL,
        job_id          TEXT NOT NULL,
        at              REAL NOT NULL
    );
    CREATE INDEX rejections_by_asset ON rejections (account_id, content_sha256);

    CREATE TABLE unknown_codes (
        code        TEXT PRIMARY KEY,
        count       INTEGER NOT NULL,
        first_seen  REAL NOT NULL,
        last_seen   REAL NOT NULL,
        last_job    TEXT
    );
    """,
    # 3: the polling schedule of a processing post, and when it was found stuck.
    """
    ALTER TABLE jobs ADD COLUMN processing_since REAL;
    ALTER TABLE jobs ADD COLUMN polls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN stuck_at REAL;
    """,
    # 4: webhook deliveries already handled (TikTok delivers at least once).
    """
    CREATE TABLE webhook_deliveries (
        key     TEXT PRIMARY KEY,
        event   TEXT NOT NULL,
        at      REAL NOT NULL
    );
    """,
    # 5: the refresh schedule and history of each account's tokens; pending authorizations.
    """
    ALTER TABLE tokens ADD COLUMN access_issued_at REAL;
    ALTER TABLE tokens ADD COLUMN refresh_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tokens ADD COLUMN next_refresh_at REAL;
    ALTER TABLE tokens ADD COLUMN refresh_started_at REAL;

    CREATE TABLE token_history (
        id           INTEGER PRIMARY KEY,
        account_id   TEXT NOT NULL,
        at           REAL NOT NULL,
        outcome      TEXT NOT NULL,
        code         TEXT,
        error_class  TEXT
    );
    CREATE INDEX token_history_by_account ON token_history (account_id, id);

    CREATE TABLE auth_requests (
        account_id     TEXT PRIMARY KEY,
        state          TEXT NOT NULL,
        code_verifier  TEXT,
        redirect_uri   TEXT NOT NULL,
        created_at     REAL NOT NULL
    );
    """,
    # 6: accepted inits (for daily caps), and per-account runtime state (pause, learned cap).
    """
    CREATE TABLE inits (
        id          INTEGER PRIMARY KEY,
        account_id  TEXT NOT NULL,
        at          REAL NOT NULL,
        publish_id  TEXT
    );
    CREATE INDEX inits_by_account ON inits (account_id, at);

    CREATE TABLE account_state (
        account_id     TEXT PRIMARY KEY,
        paused         INTEGER NOT NULL DEFAULT 0,
        learned_cap    INTEGER,
        blocked_until  REAL,
        updated_at     REAL NOT NULL
    );
    """,
    # 7: each account's circuit breaker, so an open breaker stays open across a restart.
    """
    ALTER TABLE account_state ADD COLUMN breaker_state TEXT NOT NULL DEFAULT 'closed';
    ALTER TABLE account_state ADD COLUMN breaker_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE account_state ADD COLUMN breaker_opened_at REAL;
    """,
    # 8: jobs for a pool of accounts (tags, region) rather than one account.
    """
    ALTER TABLE jobs ADD COLUMN pool TEXT;
    CREATE INDEX jobs_by_pool ON jobs (pool, state) WHERE pool IS NOT NULL;
    """,
    # 9: failed attempts, found without reading every attempt: an account's last error and
    # the errors of the last hour (the status dashboard), and failures by code (/metrics).
    # Partial, so the attempts that succeed (nearly all of them) cost no index entry.
    """
    CREATE INDEX attempts_errors_by_account ON attempts (account_id, finished_at)
        WHERE error_code IS NOT NULL;
    CREATE INDEX attempts_errors_by_time ON attempts (finished_at) WHERE error_code IS NOT NULL;
    CREATE INDEX attempts_failed_by_code ON attempts (error_code, error_class)
        WHERE outcome <> 'ok';
    """,
)
