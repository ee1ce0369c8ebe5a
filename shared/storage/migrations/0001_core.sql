-- Core tables: the sensor registry, observations, dead letters, alerts, tasks, deliveries, audit.
-- Runs on plain PostgreSQL and on TimescaleDB alike; 0002 adds the time-series features.

CREATE TABLE IF NOT EXISTS sensors (
    sensor_id     text PRIMARY KEY,
    domain        text NOT NULL,
    kind          text NOT NULL,
    gateway_id    text NOT NULL,
    lat           double precision NOT NULL,
    lon           double precision NOT NULL,
    district      text,
    quantities    jsonb NOT NULL,
    personal      boolean NOT NULL DEFAULT false,
    meta          jsonb NOT NULL DEFAULT '{}'::jsonb,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (sensor, quantity, time): the natural key makes a replayed Kafka batch harmless.
CREATE TABLE IF NOT EXISTS observations (
    time        timestamptz NOT NULL,
    sensor_id   text NOT NULL,
    quantity    text NOT NULL,
    value       double precision NOT NULL,
    unit        text NOT NULL,
    qc          smallint NOT NULL,
    domain      text NOT NULL,
    district    text,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT observations_key UNIQUE (sensor_id, quantity, time)
);
CREATE INDEX IF NOT EXISTS observations_time_idx ON observations (time DESC);
CREATE INDEX IF NOT EXISTS observations_domain_time_idx ON observations (domain, quantity, time DESC);

-- Personal data (worker wearables) lives apart, readable only by the restricted role.
CREATE SCHEMA IF NOT EXISTS restricted;
CREATE TABLE IF NOT EXISTS restricted.worker_observations (
    time        timestamptz NOT NULL,
    sensor_id   text NOT NULL,
    worker_id   text NOT NULL,
    quantity    text NOT NULL,
    value       double precision NOT NULL,
    unit        text NOT NULL,
    qc          smallint NOT NULL,
    lat         double precision,
    lon         double precision,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT worker_observations_key UNIQUE (sensor_id, quantity, time)
);
CREATE INDEX IF NOT EXISTS worker_observations_time_idx ON restricted.worker_observations (time DESC);

CREATE TABLE IF NOT EXISTS dead_letters (
    id            bigserial PRIMARY KEY,
    event_id      text UNIQUE,
    received_at   timestamptz NOT NULL,
    stage         text NOT NULL,
    reason_code   text NOT NULL,
    reason        text NOT NULL,
    origin        text NOT NULL,
    gateway_id    text,
    sensor_id     text,
    original      bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_reason_idx ON dead_letters (reason_code, received_at DESC);

CREATE TABLE IF NOT EXISTS alerts (
    alert_id        text PRIMARY KEY,
    domain          text NOT NULL,
    kind            text NOT NULL,
    severity        text NOT NULL,
    level           text,
    status          text NOT NULL,
    title_zh        text NOT NULL,
    title_en        text NOT NULL,
    message_zh      text NOT NULL,
    message_en      text NOT NULL,
    lat             double precision,
    lon             double precision,
    district        text,
    dedup_key       text NOT NULL,
    raised_at       timestamptz NOT NULL,
    evidence        jsonb NOT NULL DEFAULT '{}'::jsonb,
    repeat_count    integer NOT NULL DEFAULT 0,
    last_seen_at    timestamptz,
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    resolved_by     text
);
CREATE INDEX IF NOT EXISTS alerts_dedup_idx ON alerts (dedup_key, raised_at DESC);
CREATE INDEX IF NOT EXISTS alerts_raised_idx ON alerts (raised_at DESC);

CREATE TABLE IF NOT EXISTS field_tasks (
    task_id         text PRIMARY KEY,
    kind            text NOT NULL,
    domain          text NOT NULL,
    priority        text NOT NULL,
    status          text NOT NULL DEFAULT 'open',
    assignee        text,
    title_zh        text NOT NULL,
    title_en        text NOT NULL,
    description_zh  text NOT NULL,
    description_en  text NOT NULL,
    lat             double precision NOT NULL,
    lon             double precision NOT NULL,
    district        text,
    required_skills jsonb NOT NULL DEFAULT '[]'::jsonb,
    due_at          timestamptz,
    related_alert_id text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    evidence        jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS field_tasks_status_idx ON field_tasks (status, created_at DESC);

CREATE TABLE IF NOT EXISTS field_task_events (
    id       bigserial PRIMARY KEY,
    task_id  text NOT NULL REFERENCES field_tasks (task_id),
    status   text NOT NULL,
    actor    text,
    note     text,
    evidence jsonb NOT NULL DEFAULT '{}'::jsonb,
    at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id     text PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    subject_kind    text NOT NULL,
    subject_id      text NOT NULL,
    recipient       text NOT NULL,
    channel         text NOT NULL,
    language        text NOT NULL,
    tier            integer NOT NULL DEFAULT 0,
    status          text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX IF NOT EXISTS deliveries_subject_idx ON deliveries (subject_id);
CREATE INDEX IF NOT EXISTS deliveries_pending_idx ON deliveries (status, next_attempt_at);

CREATE TABLE IF NOT EXISTS audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    role    text NOT NULL,
    action  text NOT NULL,
    subject text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at DESC);
