-- Notification service: durable dedup, escalation timers, delivery queue and field-task state.
-- Extends the core tables of 0001 (never edited); every timer is a due-time column that a worker polls,
-- so a restarted service picks up exactly where the old one stopped.

-- Each consumed Kafka event once: the inbox row is written in the same transaction as its effects.
CREATE TABLE IF NOT EXISTS notify_inbox (
    event_id    text PRIMARY KEY,
    topic       text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE alerts ADD COLUMN IF NOT EXISTS rule text;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS alerts_updated_idx ON alerts (updated_at);
CREATE INDEX IF NOT EXISTS alerts_open_dedup_idx ON alerts (dedup_key) WHERE resolved_at IS NULL;

-- Escalation until acknowledged: one row per alert, `next_due_at` polled by the escalation worker.
CREATE TABLE IF NOT EXISTS notify_escalations (
    alert_id    text PRIMARY KEY REFERENCES alerts (alert_id),
    rule        text NOT NULL,
    tier        integer NOT NULL DEFAULT 0,
    round       integer NOT NULL DEFAULT 0,
    state       text NOT NULL DEFAULT 'active',   -- active | acknowledged | resolved
    next_due_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notify_escalations_due_idx ON notify_escalations (next_due_at) WHERE state = 'active';

-- The delivery queue lives in `deliveries`: pending rows with `next_attempt_at` are the retry,
-- quiet-hour and rate-limit timers; `sending` rows whose lease expired are retried after a crash.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS address text;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS severity text;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS group_key text;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS round integer NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS message jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS source_event_id text;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS hold_reason text;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS grouped_into text;
CREATE INDEX IF NOT EXISTS deliveries_recipient_sent_idx ON deliveries (recipient, channel, sent_at DESC);
CREATE INDEX IF NOT EXISTS deliveries_group_idx ON deliveries (recipient, channel, group_key, created_at DESC);

ALTER TABLE field_tasks ADD COLUMN IF NOT EXISTS assigned_at timestamptz;
ALTER TABLE field_tasks ADD COLUMN IF NOT EXISTS rejected_by jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE field_tasks ADD COLUMN IF NOT EXISTS deadline_escalated_at timestamptz;
CREATE INDEX IF NOT EXISTS field_tasks_due_idx ON field_tasks (due_at) WHERE deadline_escalated_at IS NULL;
CREATE INDEX IF NOT EXISTS field_tasks_assignee_idx ON field_tasks (assignee, status);

-- Where field staff are and whether they take work, as reported by their phones (overrides the roster).
CREATE TABLE IF NOT EXISTS notify_staff_state (
    person_id  text PRIMARY KEY,
    lat        double precision,
    lon        double precision,
    available  boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);
