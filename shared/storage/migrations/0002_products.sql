-- Model outputs of the domain services.

CREATE TABLE IF NOT EXISTS air_grid (
    valid_at  timestamptz NOT NULL,
    pollutant text NOT NULL,
    cell_id   text NOT NULL,
    lat       double precision NOT NULL,
    lon       double precision NOT NULL,
    value     double precision NOT NULL,
    std       double precision NOT NULL,
    aqi       integer,
    district  text,
    CONSTRAINT air_grid_key UNIQUE (pollutant, cell_id, valid_at)
);

CREATE TABLE IF NOT EXISTS forecasts (
    issued_at  timestamptz NOT NULL,
    domain     text NOT NULL,
    station_id text NOT NULL,
    variable   text NOT NULL,
    horizon_h  integer NOT NULL,
    valid_at   timestamptz NOT NULL,
    value      double precision NOT NULL,
    p10        double precision,
    p90        double precision,
    model      text NOT NULL,
    CONSTRAINT forecasts_key UNIQUE (domain, station_id, variable, horizon_h, issued_at)
);

CREATE TABLE IF NOT EXISTS source_attributions (
    at           timestamptz NOT NULL,
    station_id   text NOT NULL,
    pollutant    text NOT NULL,
    source_id    text NOT NULL,
    contribution double precision NOT NULL,
    confidence   double precision,
    rank         integer NOT NULL,
    CONSTRAINT source_attributions_key UNIQUE (station_id, pollutant, source_id, at)
);

CREATE TABLE IF NOT EXISTS bulletins (
    bulletin_id text PRIMARY KEY,
    district    text NOT NULL,
    issued_at   timestamptz NOT NULL,
    text_zh     text NOT NULL,
    text_en     text NOT NULL,
    signals     jsonb NOT NULL DEFAULT '[]'::jsonb,
    chart_png   text,
    html        text
);

CREATE TABLE IF NOT EXISTS leaks (
    leak_id            text PRIMARY KEY,
    detected_at        timestamptz NOT NULL,
    pipe_id            text NOT NULL,
    candidates         jsonb NOT NULL,
    estimated_flow_m3h double precision,
    dma                text,
    kind               text,
    status             text NOT NULL DEFAULT 'open'
);

CREATE TABLE IF NOT EXISTS incidents (
    incident_id  text PRIMARY KEY,
    kind         text NOT NULL,
    status       text NOT NULL,
    severity     text NOT NULL,
    title_zh     text NOT NULL,
    title_en     text NOT NULL,
    lat          double precision,
    lon          double precision,
    districts    jsonb NOT NULL DEFAULT '[]'::jsonb,
    opened_at    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    related_alert_ids jsonb NOT NULL DEFAULT '[]'::jsonb,
    area_geojson jsonb,
    report_path  text
);

CREATE TABLE IF NOT EXISTS incident_events (
    id          bigserial PRIMARY KEY,
    incident_id text NOT NULL REFERENCES incidents (incident_id),
    status      text NOT NULL,
    at          timestamptz NOT NULL,
    note        text
);

CREATE TABLE IF NOT EXISTS equipment_health (
    time       timestamptz NOT NULL,
    machine_id text NOT NULL,
    score      double precision NOT NULL,
    is_anomaly boolean NOT NULL,
    channels   jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT equipment_health_key UNIQUE (machine_id, time)
);
