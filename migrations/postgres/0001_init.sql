-- Apps managed at run time (config-file apps are not stored here).
CREATE TABLE apps (
    id TEXT PRIMARY KEY NOT NULL,
    app_key TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    enabled BIGINT NOT NULL DEFAULT 1,
    settings TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The one durable job queue: a job is accepted once its row is committed.
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    run_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    lease_token TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, run_at);

-- One row per attempt, whatever its outcome.
CREATE TABLE job_attempts (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    node TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    http_status BIGINT,
    detail TEXT
);
CREATE INDEX job_attempts_job ON job_attempts (job_id);
