"""Grafana dashboards as code: built in Python (`build.py`), pushed over the HTTP API
(`provision.py`, `cityops grafana provision`) or written as file provisioning (`provisioning/`)."""
