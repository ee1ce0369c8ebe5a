"""Pure weather models: observation QC, nowcasts with model selection, warning signals, bulletins.

Arrays and DataFrames in, typed results out; no Kafka, no database. The batch commands
(`services/weather/batch.py`) and the streaming service call these same functions.
"""
