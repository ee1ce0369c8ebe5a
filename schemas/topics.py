"""Every Kafka and MQTT topic of CityOps, defined once.

`cityops stack up` creates the Kafka topics from this list, the AsyncAPI document is
generated from it (schemas/asyncapi.yaml), and the Kubernetes `KafkaTopic`s must match it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from schemas.alerts import Alert
from schemas.deadletter import DeadLetter
from schemas.deliveries import NotificationDelivery
from schemas.observations import Observation, SensorMessage
from schemas.products import AirGrid, Bulletin, Incident, SourceAttribution, StationForecast
from schemas.tasks import FieldTask, FieldTaskUpdate

DAY_MS = 24 * 3600 * 1000
Access = Literal["public", "internal", "restricted"]


@dataclass(frozen=True)
class KafkaTopic:
    name: str
    event_type: str
    payload: type[BaseModel]
    key: str
    partitions: int
    retention_ms: int
    access: Access  # public: outside city systems may read; restricted: personal data
    description: str
    cleanup_policy: str = "delete"


@dataclass(frozen=True)
class MqttTopic:
    pattern: str
    payload: type[BaseModel]
    direction: Literal["publish", "subscribe"]  # seen from the broker's clients that own the topic
    description: str


def _obs(domain: str, access: Access, partitions: int, note: str) -> KafkaTopic:
    return KafkaTopic(
        name=f"cityops.observations.{domain}.v1",
        event_type=f"observation.{domain}", payload=Observation, key="sensor_id",
        partitions=partitions, retention_ms=7 * DAY_MS, access=access,
        description=f"Validated, unit-normalised, QARTOD-flagged {domain} observations. {note}",
    )


KAFKA_TOPICS: list[KafkaTopic] = [
    _obs("air", "public", 6, "Reference stations and low-cost sensors."),
    _obs("water", "public", 6, "Network pressure, flow, tank and drain levels, rain gauges."),
    _obs("weather", "public", 3, "Automatic weather stations."),
    _obs("equipment", "internal", 3, "Machine condition channels (pumps, fans)."),
    _obs("safety", "internal", 3, "Fixed safety sensors: gas detectors, zone access points."),
    KafkaTopic("cityops.observations.personal.restricted.v1", "observation.personal", Observation, "sensor_id", 3,
               7 * DAY_MS, "restricted",
               "Readings of personal sensors (worker wearables: position, gases, heart rate, falls) of any domain. "
               "PERSONAL DATA: only the emergency service and the sink may read it; kept 7 days."),
    KafkaTopic("cityops.deadletter.v1", "dead_letter", DeadLetter, "sensor_id or origin", 3, 14 * DAY_MS, "internal",
               "Everything refused anywhere in the platform, with the reason and the original bytes."),
    KafkaTopic("cityops.alerts.v1", "alert", Alert, "dedup_key", 6, 30 * DAY_MS, "public",
               "Alerts from every domain, for the notification service and city systems. No personal data: "
               "workers appear only by pseudonymous id."),
    KafkaTopic("cityops.tasks.v1", "field_task", FieldTask, "task_id", 3, 30 * DAY_MS, "internal",
               "Field tasks (inspect a source, repair a pipe, respond to an incident) to be assigned."),
    KafkaTopic("cityops.tasks.updates.v1", "field_task_update", FieldTaskUpdate, "task_id", 3, 30 * DAY_MS,
               "internal", "State changes of field tasks."),
    KafkaTopic("cityops.notify.deliveries.v1", "notification_delivery", NotificationDelivery, "subject_id", 3,
               30 * DAY_MS, "internal", "Delivery log of every notification attempt."),
    KafkaTopic("cityops.air.grid.v1", "air.grid", AirGrid, "pollutant", 3, 7 * DAY_MS, "public",
               "Gridded pollutant estimates (以算代测) with 1-sigma uncertainty."),
    KafkaTopic("cityops.air.forecast.v1", "air.forecast", StationForecast, "station_id", 3, 7 * DAY_MS, "public",
               "Station forecasts of pollutants, 1-72 h."),
    KafkaTopic("cityops.air.attribution.v1", "air.attribution", SourceAttribution, "station_id", 3, 30 * DAY_MS,
               "public", "Source tracing (溯源) results for exceedances."),
    KafkaTopic("cityops.weather.nowcast.v1", "weather.nowcast", StationForecast, "station_id", 3, 7 * DAY_MS,
               "public", "0-6 h nowcasts per station and variable with p10/p90 and the chosen model."),
    KafkaTopic("cityops.weather.bulletins.v1", "weather.bulletin", Bulletin, "district", 3, 90 * DAY_MS, "public",
               "Hourly forecast bulletins per district, Chinese and English."),
    KafkaTopic("cityops.emergency.incidents.v1", "incident", Incident, "incident_id", 3, 90 * DAY_MS, "public",
               "Cross-domain incidents and their lifecycle."),
]

MQTT_TOPICS: list[MqttTopic] = [
    MqttTopic("city/{gateway_id}/{sensor_id}", SensorMessage, "publish",
              "Sensor readings, QoS 1. A gateway may publish only under city/<its gateway_id>/ (broker ACL)."),
    MqttTopic("field/{person_id}/tasks", FieldTask, "subscribe",
              "Task and alert pushes to one field worker's phone. Only that person may subscribe (broker ACL)."),
]

OBSERVATION_TOPIC = {t.event_type.split(".", 1)[1]: t.name for t in KAFKA_TOPICS
                     if t.event_type.startswith("observation.") and t.access != "restricted"}
# personal sensors' readings, whatever their domain
PERSONAL_OBSERVATIONS = "cityops.observations.personal.restricted.v1"
BY_NAME = {t.name: t for t in KAFKA_TOPICS}

DEADLETTER = "cityops.deadletter.v1"
ALERTS = "cityops.alerts.v1"
TASKS = "cityops.tasks.v1"
TASK_UPDATES = "cityops.tasks.updates.v1"
DELIVERIES = "cityops.notify.deliveries.v1"
