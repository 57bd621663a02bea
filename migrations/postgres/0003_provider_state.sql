-- A provider's access token, shared by every node so it is refreshed at most once per expiry:
-- the node whose conditional update sets refreshing_until fetches it, the others read it.
CREATE TABLE provider_tokens (
    app_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    token TEXT NOT NULL DEFAULT '',
    api_domain TEXT NOT NULL DEFAULT '',
    expires_at BIGINT NOT NULL DEFAULT 0,
    refreshing_until BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, provider)
);

-- Every Zoho operation a delivery made, as the seeds' zohoSyncLogs kept them.
CREATE TABLE zoho_sync_logs (
    id BIGSERIAL PRIMARY KEY,
    app_id TEXT NOT NULL,
    delivery_id BIGINT NOT NULL,
    reference TEXT,
    operation TEXT NOT NULL,
    entity TEXT NOT NULL,
    remote_id TEXT,
    status TEXT NOT NULL,
    error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX zoho_sync_logs_reference ON zoho_sync_logs (app_id, reference, id);
CREATE INDEX zoho_sync_logs_app ON zoho_sync_logs (app_id, id);
