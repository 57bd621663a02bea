-- Webhook events are written here when they are observed and batched into jobs when due,
-- so that a crash between the two loses nothing. A leave waiting out its cancel window
-- carries its pair key (channel and user), which the join that cancels it deletes.
CREATE TABLE webhook_events (
    id BIGSERIAL PRIMARY KEY,
    app_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    pair_key TEXT,
    due_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhook_events_due ON webhook_events (due_at);
CREATE INDEX webhook_events_pair ON webhook_events (app_id, pair_key);

-- What the webhook receivers were told is occupied (user_id '') or a member, on a node
-- without a cluster: after a crash, each row gets its channel_vacated / member_removed.
CREATE TABLE webhook_held (
    app_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (app_id, channel, user_id)
);
