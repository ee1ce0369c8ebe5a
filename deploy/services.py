"""The suite's services, declared once. Compose, the Kubernetes base and the consistency tests read this.

A service's environment is not written by hand: `env_for()` derives it from the service's settings class
(pydantic `model_fields` + `env_prefix`). Every required field (no default) is set; optional fields are
set only where the deployment needs a value other than the code's default (`overrides`). Secrets
(`SECRET_FIELDS`) come from a Secret / `${VAR:?}`, never from a ConfigMap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from pydantic_settings import BaseSettings

from schemas.topics import (
    ALERTS,
    DEADLETTER,
    DELIVERIES,
    OBSERVATION_TOPIC,
    PERSONAL_OBSERVATIONS,
    TASK_UPDATES,
    TASKS,
)

IMAGE = "cityops"  # one image, built from the Dockerfile target below, runs every service
IMAGE_TARGET = "runtime"
# Settings that hold credentials. Anything here is read from a Secret, never a ConfigMap.
SECRET_FIELDS = {"db_url", "notify_webhook_secret", "notify_sms_token", "notify_session_secret",
                 "api_session_secret", "emergency_session_secret", "emergency_pseudonym_key"}

# Where the containers mount things (read-only root filesystem; only these are writable or mounted).
MQTT_CREDENTIALS_PATH = "/etc/cityops/mqtt/credentials.json"
STATE_DIR = "/tmp/cityops-state"


@dataclass(frozen=True)
class Service:
    name: str  # compose service, Deployment, Service and KafkaUser name
    argv: tuple[str, ...]  # `cityops <argv> --port <port>`
    port: int
    module: str  # the service's app module
    settings: str  # module of its settings class; PlatformSettings is used while that module does not exist
    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    group: str | None = None  # Kafka consumer group (without CITYOPS_KAFKA_GROUP_PREFIX)
    group_is_prefix: bool = False
    mqtt_user: str | None = None  # Mosquitto service user (shared/stack/mosquitto.py SERVICE_ACL)
    needs_db: bool = True
    autoscale: bool = False  # KEDA on consumer lag of `consumes`, capped at the smallest partition count
    overrides: dict[str, str] = field(default_factory=dict)  # settings field -> value
    optional_secrets: tuple[str, ...] = ()  # SECRET_FIELDS this service may be given
    public: bool = False  # reached from outside the namespace (console, API clients), not only by probes
    memory_mi: int = 512
    cpu_m: int = 250


OBS = tuple(OBSERVATION_TOPIC.values())

# shared.service.serve listens on CITYOPS_HTTP_HOST: the pod's address, so probes and Services reach it
LISTEN_ALL = {"http_host": "0.0.0.0"}

SERVICES: list[Service] = [
    Service("ingest-gateway", ("ingest", "gateway"), 8101, "services.ingest.app",
            "services.ingest.settings",
            produces=(*OBS, PERSONAL_OBSERVATIONS, DEADLETTER), mqtt_user="svc-ingest", overrides=LISTEN_ALL),
    Service("ingest-sink", ("ingest", "sink"), 8102, "services.ingest.app", "services.ingest.settings",
            consumes=(*OBS, PERSONAL_OBSERVATIONS, DEADLETTER), produces=(DEADLETTER,),
            group="cityops-sink-observations", autoscale=True, memory_mi=768, overrides=LISTEN_ALL),
    Service("air-quality", ("air", "serve"), 8110, "services.air_quality.app", "services.air_quality.settings",
            consumes=(OBSERVATION_TOPIC["air"], OBSERVATION_TOPIC["weather"]),
            produces=("cityops.air.grid.v1", "cityops.air.forecast.v1", "cityops.air.attribution.v1",
                      ALERTS, TASKS, DEADLETTER),
            group="cityops-air", autoscale=True, memory_mi=1024, cpu_m=500, overrides=LISTEN_ALL),
    Service("weather", ("weather", "serve"), 8111, "services.weather.app", "services.weather.settings",
            consumes=(OBSERVATION_TOPIC["weather"],),
            produces=("cityops.weather.nowcast.v1", "cityops.weather.bulletins.v1", ALERTS, DEADLETTER),
            group="cityops-weather", autoscale=True, memory_mi=1024, cpu_m=500, overrides=LISTEN_ALL),
    Service("water", ("water", "serve"), 8112, "services.water.app", "services.water.settings",
            consumes=(OBSERVATION_TOPIC["water"],), produces=(ALERTS, TASKS, DEADLETTER),
            group="cityops-water", autoscale=True, memory_mi=1024, cpu_m=500, overrides=LISTEN_ALL),
    Service("emergency", ("emergency", "serve"), 8113, "services.emergency.app", "services.emergency.settings",
            consumes=(OBSERVATION_TOPIC["equipment"], OBSERVATION_TOPIC["safety"], PERSONAL_OBSERVATIONS),
            produces=("cityops.emergency.incidents.v1", ALERTS, TASKS, DEADLETTER),
            # EmergencySettings.emergency_group_prefix: its groups are named from this prefix
            group="cityops-emergency", group_is_prefix=True, autoscale=True, memory_mi=768, overrides=LISTEN_ALL),
    Service("notify", ("notify", "serve"), 8120, "shared.notify.app", "shared.notify.settings",
            consumes=(ALERTS, TASKS, TASK_UPDATES), produces=(DELIVERIES, TASK_UPDATES, DEADLETTER),
            group="cityops-notify", mqtt_user="svc-notify", autoscale=True,
            # listen on the pod's address (probes, Service); the code's default is loopback for a laptop
            overrides={"notify_host": "0.0.0.0"},
            optional_secrets=("notify_webhook_secret", "notify_sms_token"), public=True,
            memory_mi=512),
    # the query API reads the database only (no Kafka); dashboards and city systems call it
    Service("api", ("api", "serve"), 8130, "shared.api.app", "shared.api.settings",
            overrides={"api_host": "0.0.0.0"}, public=True),
]
# Services whose settings have no listen-address field yet: uvicorn binds 127.0.0.1, so the kubelet's
# httpGet probes and the Service cannot reach them. Until their owners add `<service>_host`, their probes
# run inside the pod (exec) and they get no Service traffic. A service leaves this set by getting a
# host override above; tests/test_deploy_consistency.py fails if a listed one already has a host field.
LOOPBACK_ONLY: set[str] = set()
# notify must sign console sessions with one key across replicas: the secret is required in deployment
# (the API and emergency accept the same tokens); emergency's worker pseudonyms must not change with the pod.
# Applied once the service has its own settings class.
REQUIRED_BY_DEPLOYMENT = {"notify": ("notify_session_secret",), "api": ("notify_session_secret",),
                          "emergency": ("notify_session_secret", "emergency_pseudonym_key")}

BY_NAME = {s.name: s for s in SERVICES}


def settings_class(svc: Service) -> type[BaseSettings]:
    """The PlatformSettings subclass defined in the service's settings module, PlatformSettings while the
    module does not exist yet."""
    from shared.settings import PlatformSettings

    try:
        mod = importlib.import_module(svc.settings)
    except ModuleNotFoundError as exc:
        if exc.name != svc.settings:
            raise
        return PlatformSettings
    found = [obj for obj in vars(mod).values() if isinstance(obj, type) and issubclass(obj, PlatformSettings)
             and obj is not PlatformSettings and obj.__module__ == svc.settings]
    if len(found) != 1:
        raise LookupError(f"{svc.settings} defines {len(found)} PlatformSettings classes; deploy/services.py "
                          "expects exactly one")
    return found[0]


def env_prefix(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def env_name(cls: type[BaseSettings], field_name: str) -> str:
    return (env_prefix(cls) + field_name).upper()


def required_fields(cls: type[BaseSettings]) -> list[str]:
    """Fields the settings class cannot start without (no default)."""
    return [n for n, f in cls.model_fields.items() if f.is_required()]


def env_fields(svc: Service, target: str = "compose") -> dict[str, str | None]:
    """Settings field -> value the deployment gives it; None means 'from the Secret'.

    Required fields, platform wiring (MQTT, state dir) and declared overrides. Raises KeyError naming
    the field when the list asks for a setting the service's class does not read.
    """
    cls = settings_class(svc)
    out: dict[str, str | None] = {}
    for name in required_fields(cls):
        out[name] = None if name in SECRET_FIELDS else _platform_value(name, target)
    out["state_dir"] = STATE_DIR
    if svc.mqtt_user:
        out["mqtt_host"] = "mosquitto"
        out["mqtt_port"] = "1883"
        out["mqtt_credentials"] = MQTT_CREDENTIALS_PATH
    out.update(svc.overrides)
    own = cls.__module__ == svc.settings
    for name in (*(REQUIRED_BY_DEPLOYMENT.get(svc.name, ()) if own else ()), *svc.optional_secrets):
        out[name] = None
    unknown = [n for n in out if n not in cls.model_fields]
    if unknown:
        raise KeyError(f"{svc.name}: {svc.settings} has no setting(s) {unknown}; fix deploy/services.py")
    return out


KAFKA_BOOTSTRAP = {"compose": "kafka:9092", "k8s": "cityops-kafka-bootstrap:9092"}  # Strimzi: <cluster>-kafka-bootstrap


def _platform_value(name: str, target: str) -> str:
    values = {"kafka_bootstrap": KAFKA_BOOTSTRAP[target]}
    if name not in values:
        raise KeyError(
            f"required setting {name!r} has no deployment value: add it to deploy/services.py "
            "(_platform_value for plain values, SECRET_FIELDS for secrets) and run `python -m deploy.generate`"
        )
    return values[name]
