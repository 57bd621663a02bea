-- A Web Push subscription is a device of platform 'webpush' whose token is the push
-- service's endpoint; its browser keys (p256dh, auth) are kept beside it, never shown.
ALTER TABLE devices ADD COLUMN push_keys TEXT;
