-- Field-task status updates the notification service publishes, written in the same transaction as the change
-- they report and marked when Kafka has them: a crash or a Kafka timeout between the commit and the publish
-- left the update unpublished for good (its event was already claimed by the inbox).
CREATE TABLE IF NOT EXISTS notify_outbox (
    event_id     text PRIMARY KEY,
    topic        text NOT NULL,
    key          bytea NOT NULL,
    value        bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS notify_outbox_pending ON notify_outbox (created_at) WHERE published_at IS NULL;
