-- Emergency service: an incident passes each lifecycle state once, so a replayed batch
-- cannot add a second row for the same step.
CREATE UNIQUE INDEX IF NOT EXISTS incident_events_step_key ON incident_events (incident_id, status);
CREATE INDEX IF NOT EXISTS worker_observations_worker_time_idx ON restricted.worker_observations (worker_id, time DESC);
