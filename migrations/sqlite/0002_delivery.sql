-- The directory: the people an app notifies, and their devices.
CREATE TABLE directory_users (
    app_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    whatsapp TEXT,
    locale TEXT,
    time_zone TEXT,
    display_name TEXT,
    -- {"type": {"channel": false}}: what the user turned off.
    preferences TEXT NOT NULL DEFAULT '{}',
    -- {"start": "22:00", "end": "07:00"} in the user's time zone, or empty.
    quiet_hours TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, user_id)
);

CREATE TABLE devices (
    app_id TEXT NOT NULL,
    token TEXT NOT NULL,
    user_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    active BIGINT NOT NULL DEFAULT 1,
    deactivated_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, token)
);
CREATE INDEX devices_user ON devices (app_id, user_id);

-- One notification per recipient of an event (or API call), whatever channels it goes to.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL,
    user_id TEXT,
    address TEXT,
    type TEXT NOT NULL,
    priority TEXT NOT NULL,
    rule TEXT,
    source TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX notifications_user ON notifications (app_id, user_id, id);

-- One delivery per notification and channel; the idempotency key is unique per app, so the
-- same event never reaches the same person twice on one channel.
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id BIGINT NOT NULL,
    app_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    -- The rule's channel entry (templates, condition) as accepted, so a config change does
    -- not alter what was promised.
    spec TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- Scheduled deliveries of one rule, key and recipient share this, so a later event can
    -- re-time them and another rule can cancel them.
    schedule_key TEXT,
    job_id BIGINT,
    run_at BIGINT NOT NULL,
    provider_id TEXT,
    -- What the provider reported later (status callbacks): delivered, read, undelivered, …
    provider_status TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (app_id, idempotency_key)
);
CREATE INDEX deliveries_notification ON deliveries (notification_id);
CREATE INDEX deliveries_schedule ON deliveries (app_id, schedule_key);
CREATE INDEX deliveries_provider ON deliveries (app_id, provider_id);

-- The in-app inbox: one item per in-app delivery.
CREATE TABLE inbox_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    notification_id BIGINT NOT NULL,
    -- One item per in-app delivery: a retried job adds nothing, two reminders add two.
    delivery_id BIGINT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX inbox_user ON inbox_items (app_id, user_id, id);

-- Answers to API calls made with an Idempotency-Key, replayed for a retry with the same key.
CREATE TABLE api_idempotency (
    app_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    status BIGINT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, idem_key)
);
