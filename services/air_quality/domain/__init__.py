"""Pure air-quality models: arrays and DataFrames in, typed results out (no Kafka, no DB)."""
