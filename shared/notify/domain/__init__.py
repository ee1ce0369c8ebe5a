"""Pure notification logic: routing rules, roster, assignment, auth. No Kafka, no database."""
