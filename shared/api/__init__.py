"""The query API for dashboards and other city systems: `cityops api serve --port 8130`."""
