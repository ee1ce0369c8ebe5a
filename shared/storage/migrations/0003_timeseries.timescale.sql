-- TimescaleDB: hypertables, an hourly continuous aggregate, compression and retention.
CREATE EXTENSION IF NOT EXISTS timescaledb;

SELECT create_hypertable('observations', by_range('time', INTERVAL '1 day'), if_not_exists => true, migrate_data => true);
SELECT create_hypertable('restricted.worker_observations', by_range('time', INTERVAL '1 day'), if_not_exists => true, migrate_data => true);
SELECT create_hypertable('air_grid', by_range('valid_at', INTERVAL '1 day'), if_not_exists => true, migrate_data => true);
SELECT create_hypertable('equipment_health', by_range('time', INTERVAL '1 day'), if_not_exists => true, migrate_data => true);

CREATE MATERIALIZED VIEW IF NOT EXISTS observations_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
       sensor_id, quantity, domain, district,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
       count(*) AS n
FROM observations
WHERE qc IN (1, 2)
GROUP BY bucket, sensor_id, quantity, domain, district
WITH NO DATA;

SELECT add_continuous_aggregate_policy('observations_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '5 minutes', if_not_exists => true);

ALTER TABLE observations SET (timescaledb.compress, timescaledb.compress_segmentby = 'sensor_id, quantity',
                              timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('observations', INTERVAL '7 days', if_not_exists => true);
SELECT add_retention_policy('observations', INTERVAL '400 days', if_not_exists => true);
-- personal data: 7 days unless configured otherwise (cityops db retention --worker-days N)
SELECT add_retention_policy('restricted.worker_observations', INTERVAL '7 days', if_not_exists => true);
SELECT add_retention_policy('air_grid', INTERVAL '90 days', if_not_exists => true);
