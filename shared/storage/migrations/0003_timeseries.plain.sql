-- Plain PostgreSQL: the same names answer the same queries. The hourly aggregate is a view
-- over date_bin(); retention is enforced by `cityops db retention` (run by the services).
CREATE OR REPLACE VIEW observations_hourly AS
SELECT date_bin(INTERVAL '1 hour', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       sensor_id, quantity, domain, district,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
       count(*) AS n
FROM observations
WHERE qc IN (1, 2)
GROUP BY 1, sensor_id, quantity, domain, district;
