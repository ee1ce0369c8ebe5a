"""The suite's services, declared once. Compose, the Kubernetes base and the consistency tests read this.

A service's environment is not written by hand: `env_for()` derives it from the service's settings class
(pydantic `model_fields` + `env_prefix`). Every required field (no default) is set; optional fields are
set only where the deployment needs a value other than the code's default (`overrides`). Secrets
(`SECRET_FIELDS`) come from a Secret / `${VAR:?}`, never from a ConfigMap.

Likewise a service's consumer groups and the topics they read are the code's own: its topic lists and its
settings' defaults, imported below, so the KafkaUser ACLs and the autoscaling triggers follow the code.
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
class Consumer:
    """One Kafka consumer of a service: the group it joins (without CITYOPS_KAFKA_GROUP_PREFIX, which the
    deployment never sets) and the topics it subscribes to."""

    group: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Service:
    name: str  # compose service, workload (Deployment or StatefulSet), Service and KafkaUser name
    argv: tuple[str, ...]  # `cityops <argv> --port <port>`
    port: int
    module: str  # the service's app module
    settings: str  # module of its settings class; PlatformSettings is used while that module does not exist
    consumers: tuple[Consumer, ...] = ()
    produces: tuple[str, ...] = ()
    mqtt_user: str | None = None  # Mosquitto service user (shared/stack/mosquitto.py SERVICE_ACL)
    needs_db: bool = True
    autoscale: bool = False  # KEDA on consumer lag of `consumes`, capped at the smallest partition count
    one_replica: bool = False  # keeps the whole city in memory: see ONE_REPLICA_WHY
    # setting given each replica's own lasting name (a StatefulSet's pod name): see REPLICA_NAME_WHY
    replica_name: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)  # settings field -> value
    optional_secrets: tuple[str, ...] = ()  # SECRET_FIELDS this service may be given
    public: bool = False  # reached from outside the namespace (console, API clients), not only by probes
    memory_mi: int = 512
    cpu_m: int = 250

    @property
    def consumes(self) -> tuple[str, ...]:
        """Every topic the service reads, in the order its consumers subscribe."""
        return tuple(dict.fromkeys(t for c in self.consumers for t in c.topics))

    def __post_init__(self) -> None:
        if self.autoscale and self.one_replica:
            raise ValueError(f"{self.name}: a one-replica service cannot autoscale ({ONE_REPLICA_WHY})")
        if self.replica_name and (self.autoscale or self.one_replica):
            raise ValueError(f"{self.name}: a service whose replicas keep named sessions is scaled by hand, "
                             f"never autoscaled nor replaced ({REPLICA_NAME_WHY})")


# Why air, weather, water and emergency run exactly one replica and never autoscale: each keeps the whole
# city's state in memory (the air grid and forecasts from every station, the weather QC's neighbours, the
# water balance of every DMA, incidents joined across equipment, safety and wearables). Kafka gives each
# replica of a group only some partitions, i.e. only some sensors: a second replica would see half the city
# (a water balance that never closes, a grid from half the stations). Their Deployments are also replaced,
# not rolled: a rolling update would run old and new pod in the group side by side for a while.
ONE_REPLICA_WHY = "it keeps the whole city's state in memory; a second replica would see only some sensors"

# Why the ingest gateway runs as a StatefulSet: its MQTT client id (`cityops-ingest-<CITYOPS_INGEST_INSTANCE>`)
# names a persistent session, and Mosquitto goes on queueing a shared-subscription member's share of the
# readings in that session while the member is away (its unacknowledged ones too). A Deployment's
# replacement pod has a new name and never takes the old session back: that share expired unread after the
# session expiry (1 h). A StatefulSet's pod comes back under the same name (`ingest-gateway-0`, `-1`, ...),
# which the downward API gives to the setting, and no two pods ever have the same name, so two replicas
# never take one session from each other. Scaling down leaves the removed pods' sessions behind: by hand
# only, as docs/operations.md says.
REPLICA_NAME_WHY = "each replica's MQTT session is found again only under the same name"
# env_fields() value of a setting that Kubernetes fills from the pod's name (downward API)
POD_NAME = "<the pod's name>"


def settings_class(svc: Service) -> type[BaseSettings]:
    """The PlatformSettings subclass defined in the service's settings module, PlatformSettings while the
    module does not exist yet."""
    return _settings_class_in(svc.settings)


def _settings_class_in(module: str) -> type[BaseSettings]:
    from shared.settings import PlatformSettings

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return PlatformSettings
    found = [obj for obj in vars(mod).values() if isinstance(obj, type) and issubclass(obj, PlatformSettings)
             and obj is not PlatformSettings and obj.__module__ == module]
    if len(found) != 1:
        raise LookupError(f"{module} defines {len(found)} PlatformSettings classes; deploy/services.py "
                          "expects exactly one")
    return found[0]


def _setting(settings_module: str, field_name: str) -> str:
    """The default of a service's setting (the deployment gives these no override)."""
    return str(_settings_class_in(settings_module).model_fields[field_name].default)


def _code_consumers() -> dict[str, tuple[Consumer, ...]]:
    """Each consuming service's consumers, from its code's topic lists and its settings' group defaults.

    The group suffixes and the sink's and weather's topic lists are written in their app modules, not as
    constants; tests/test_deploy_consistency.py starts each service's consumers and fails on any drift."""
    from services.air_quality.handlers import TOPICS as AIR_TOPICS
    from services.emergency.handlers import EQUIPMENT_TOPICS, PERSONAL_TOPICS, SAFETY_TOPICS
    from services.water.handlers import TOPICS as WATER_TOPICS

    emergency = _setting("services.emergency.settings", "emergency_group_prefix")
    return {
        "ingest-sink": (Consumer(_setting("services.ingest.settings", "sink_group"),
                                 (*OBSERVATION_TOPIC.values(), PERSONAL_OBSERVATIONS, DEADLETTER)),),
        "air-quality": (Consumer(f"{_setting('services.air_quality.settings', 'air_group_prefix')}-stream",
                                 tuple(AIR_TOPICS)),),
        "weather": (Consumer(_setting("services.weather.settings", "weather_group"), (OBSERVATION_TOPIC["weather"],)),),
        "water": (Consumer(f"{_setting('services.water.settings', 'water_group_prefix')}-stream",
                           tuple(WATER_TOPICS)),),
        "emergency": (Consumer(f"{emergency}-equipment", tuple(EQUIPMENT_TOPICS)),
                      Consumer(f"{emergency}-personal", tuple(PERSONAL_TOPICS)),
                      Consumer(f"{emergency}-safety", tuple(SAFETY_TOPICS))),
        # notify reads alerts and tasks; the task updates it only writes (field staff's answers come over HTTP)
        "notify": (Consumer(_setting("shared.notify.settings", "notify_group"),
                            (_setting("shared.notify.settings", "notify_alerts_topic"),
                             _setting("shared.notify.settings", "notify_tasks_topic"))),),
    }


CONSUMERS = _code_consumers()
OBS = tuple(OBSERVATION_TOPIC.values())

# shared.service.serve listens on CITYOPS_HTTP_HOST: the pod's address, so probes and Services reach it
LISTEN_ALL = {"http_host": "0.0.0.0"}

SERVICES: list[Service] = [
    Service("ingest-gateway", ("ingest", "gateway"), 8101, "services.ingest.app",
            "services.ingest.settings",
            produces=(*OBS, PERSONAL_OBSERVATIONS, DEADLETTER), mqtt_user="svc-ingest",
            replica_name="ingest_instance", overrides=LISTEN_ALL),
    # rows are written idempotently by key, so replicas may split the partitions
    Service("ingest-sink", ("ingest", "sink"), 8102, "services.ingest.app", "services.ingest.settings",
            consumers=CONSUMERS["ingest-sink"], produces=(DEADLETTER,),
            autoscale=True, memory_mi=768, overrides=LISTEN_ALL),
    Service("air-quality", ("air", "serve"), 8110, "services.air_quality.app", "services.air_quality.settings",
            consumers=CONSUMERS["air-quality"],
            produces=("cityops.air.grid.v1", "cityops.air.forecast.v1", "cityops.air.attribution.v1",
                      ALERTS, TASKS, DEADLETTER),
            one_replica=True, memory_mi=1024, cpu_m=500, overrides=LISTEN_ALL),
    Service("weather", ("weather", "serve"), 8111, "services.weather.app", "services.weather.settings",
            consumers=CONSUMERS["weather"],
            produces=("cityops.weather.nowcast.v1", "cityops.weather.bulletins.v1", ALERTS, DEADLETTER),
            one_replica=True, memory_mi=1024, cpu_m=500, overrides=LISTEN_ALL),
    Service("water", ("water", "serve"), 8112, "services.water.app", "services.water.settings",
            consumers=CONSUMERS["water"], produces=(ALERTS, TASKS, DEADLETTER),
            one_replica=True, memory_mi=1024, cpu_m=500, overrides=LISTEN_ALL),
    Service("emergency", ("emergency", "serve"), 8113, "services.emergency.app", "services.emergency.settings",
            consumers=CONSUMERS["emergency"],
            produces=("cityops.emergency.incidents.v1", ALERTS, TASKS, DEADLETTER),
            one_replica=True, memory_mi=768, overrides=LISTEN_ALL),
    # deliveries, escalations and sessions live in the database (leases, one session key): replicas may split
    Service("notify", ("notify", "serve"), 8120, "shared.notify.app", "shared.notify.settings",
            consumers=CONSUMERS["notify"], produces=(DELIVERIES, TASK_UPDATES, DEADLETTER),
            mqtt_user="svc-notify", autoscale=True,
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


def env_prefix(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def env_name(cls: type[BaseSettings], field_name: str) -> str:
    return (env_prefix(cls) + field_name).upper()


def required_fields(cls: type[BaseSettings]) -> list[str]:
    """Fields the settings class cannot start without (no default)."""
    return [n for n, f in cls.model_fields.items() if f.is_required()]


def env_fields(svc: Service, target: str = "compose") -> dict[str, str | None]:
    """Settings field -> value the deployment gives it; None means 'from the Secret', POD_NAME 'the pod's
    name'.

    Required fields, platform wiring (MQTT, state dir), the replica's name and declared overrides. Raises
    KeyError naming the field when the list asks for a setting the service's class does not read.
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
    if svc.replica_name:
        # compose runs one container of the service, named <project>-<service>-1 (docs/operations.md)
        out[svc.replica_name] = POD_NAME if target == "k8s" else f"{svc.name}-1"
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
