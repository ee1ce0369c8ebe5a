"""One router per domain; `common` holds login, sensors and alerts."""
