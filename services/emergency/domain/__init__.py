"""Emergency domain: pure models and rules, no Kafka, no database.

What the streaming service calls:

- fault.fit_detector(train_frame, model="mset"|"hybrid"|"pca") -> FaultDetector: learn one
  machine's normal operation; .score(frame) -> FaultScores (score, is_anomaly, contributions).
- fault.OnlineFaultMonitor(detector).update(sample) -> (score, is_anomaly, channels, started):
  the same detector one sample at a time.
- fault.alerts_from(scores) -> [FaultAlert]: alarm episodes with the channels that deviate.
- safety.SafetyMonitor(zones, limits).update(WearableReading) -> [SafetyAlert]: worker safety
  (gas, heart rate, fall, man-down, SOS; graded, raised one grade in hazard zones) and
  restricted-zone entry outside permitted hours; safety.reading_from_message(time, worker, values).
- zones.Zone.from_config(dict): geofences from the scenario/site config.
- plume.evacuation_polygon(lat, lon, rate_g_s, wind_from_deg, wind_speed_ms, threshold_mg_m3)
  -> EvacuationArea: Gaussian-plume downwind evacuation polygon.
- incidents.flood_incidents / gas_evacuation_incident / pumping_station_incident /
  worker_incident: cross-domain rules on typed events -> Incident (idempotent ids);
  incidents.advance(incident, state, at, actor): the lifecycle
  detected -> dispatched -> acknowledged -> on_site -> resolved -> reported.
- report.render_report(incident, city, generated_at, zones) -> HTML with timeline, evidence, map.
- privacy.pseudonymise(worker_id, key), privacy.episode_pseudonym(pseudonym, start, key),
  privacy.shared_alert(alert, key, district, episode_start),
  privacy.retention_cutoff(now, days=7) / expired(times, now, days).
- simulate.generate(city, start, hours, seed) -> DomainScenario for the city simulator.
"""
