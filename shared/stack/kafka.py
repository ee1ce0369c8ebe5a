"""Apache Kafka, single node in KRaft mode, jars resolved from Maven Central by `stack/kafka/pom.xml`.

Two client listeners, as in the Kubernetes cluster (deploy/generate.py): PLAINTEXT on loopback for the suite's
own processes (the super user ANONYMOUS), and SASL_PLAINTEXT with SCRAM-SHA-512 for everyone else, where the
StandardAuthorizer applies each user's ACLs. The local users are `OUTSIDE_USERS`: other city systems read the
public topics and nothing on personal-data topics. Their credentials are written to
`.state/kafka/clients/<user>.env` (CITYOPS_KAFKA_* settings that shared.kafka understands).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

from shared.stack.config import PROJECT_ROOT, StackConfig
from shared.stack.proc import port_open, read_pid, spawn, stop, wait_until

POM = PROJECT_ROOT / "stack" / "kafka" / "pom.xml"

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
"""


OUTSIDE_READER = "city-systems-readonly"



def new_cluster_id(draw=uuid.uuid4) -> str:
    """A KRaft cluster id as Kafka's own Uuid.randomUuid makes them: never starting with '-', which the storage
    tool would read as an option (1 fresh start in 64 failed with "--cluster-id/-t: expected one argument")."""
    while True:
        cid = base64.urlsafe_b64encode(draw().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid

class StaleBroker(RuntimeError):
    """The broker was started with an older configuration; a restart applies the current one."""


def outside_users() -> dict[str, dict[str, list[str]]]:
    """SCRAM users of the local broker -> their ACLs: topics they may read, consumer-group prefixes."""
    from schemas.topics import KAFKA_TOPICS

    return {OUTSIDE_READER: {"read_topics": sorted(t.name for t in KAFKA_TOPICS if t.access == "public"),
                             "group_prefixes": ["external-"]}}


class Kafka:
    name = "kafka"

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.home = cfg.dir("kafka")
        self.libs = self.home / "libs"
        self.pid_file = self.home / "kafka.pid"
        self.log_file = self.home / "stdout.log"
        self.props = self.home / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.cfg.kafka_port}"

    def ensure_jars(self) -> None:
        if self.libs.exists() and any(self.libs.glob("kafka_2.13-*.jar")):
            return
        if shutil.which("java") is None:
            raise RuntimeError("Java 17 is needed for Kafka: run `apt-get install -y openjdk-17-jre-headless`")
        if shutil.which("mvn") is None:
            raise RuntimeError("Maven is needed to fetch the Kafka jars: run `apt-get install -y maven`")
        print("  kafka: resolving broker jars from Maven Central (first run only) …", flush=True)
        tmp = self.home / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
            check=True,
        )
        tmp.rename(self.libs)

    def write_config(self) -> None:
        data = self.cfg.dir("kafka", "data")
        p, c, sp = self.cfg.kafka_port, self.cfg.kafka_controller_port, self.cfg.kafka_sasl_port
        self.props.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{c}",
                f"listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c},SASL_PLAINTEXT://127.0.0.1:{sp}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{p},SASL_PLAINTEXT://127.0.0.1:{sp}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                # ACLs apply on the SASL listener; the loopback PLAINTEXT listener is the suite itself
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "super.users=User:ANONYMOUS",
                "allow.everyone.if.no.acl.found=false",
                f"log.dirs={data}",
                "num.partitions=3",
                # topics come from schemas/topics.py, never from a typo in a producer
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.check.interval.ms=60000",
                "",
            ])
        )
        (self.home / "log4j2.properties").write_text(LOG4J2.format(log=self.home / "server.log"))

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", main, *args,
        ]

    def format_storage(self) -> None:
        data = self.home / "data"
        if (data / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        r = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.props)),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"kafka storage format failed: {(r.stderr or r.stdout).strip()[-800:]}")

    def running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def up(self) -> None:
        if self.running() and port_open(self.cfg.kafka_port):
            return
        for port, var in [(self.cfg.kafka_port, "CITYOPS_KAFKA_PORT"), (self.cfg.kafka_sasl_port, "CITYOPS_KAFKA_SASL_PORT")]:
            if port_open(port):
                raise RuntimeError(f"port {port} is taken by another program; set {var} to a free port")
        self.ensure_jars()
        self.write_config()
        self.format_storage()
        spawn(self._java("kafka.Kafka", str(self.props)), log_file=self.log_file, pid_file=self.pid_file)
        wait_until(self.healthy, timeout=90, what="Kafka", log_file=self.home / "server.log")

    def healthy(self) -> bool:
        if not (self.running() and port_open(self.cfg.kafka_port)):
            return False
        try:
            asyncio.run(_list_topics(self.bootstrap))
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        return True

    def down(self) -> bool:
        return stop(self.pid_file, timeout=30)

    @property
    def users_file(self) -> Path:
        return self.home / "users.json"

    def client_env_file(self, user: str) -> Path:
        return self.home / "clients" / f"{user}.env"

    def ensure_users(self) -> list[str]:
        """Create the SCRAM users of `outside_users()` and their ACLs where missing or changed; returns the
        users (re)applied. Idempotent: a user whose ACL set is unchanged costs nothing on the next `up`."""
        if not port_open(self.cfg.kafka_sasl_port):
            raise StaleBroker(f"the running Kafka has no SASL listener on {self.cfg.kafka_sasl_port} (started by an "
                              "older CityOps): restart it with `cityops stack down && cityops stack up`")
        state = json.loads(self.users_file.read_text()) if self.users_file.exists() else {}
        done = []
        for user, acl in outside_users().items():
            entry = state.get(user) or {"password": secrets.token_urlsafe(24)}
            digest = hashlib.sha256(json.dumps([acl, self.cfg.kafka_sasl_port], sort_keys=True).encode()).hexdigest()
            if entry.get("applied") != digest:
                self._tool("kafka.admin.ConfigCommand", "--alter", "--entity-type", "users", "--entity-name", user,
                           "--add-config", f"SCRAM-SHA-512=[iterations=8192,password={entry['password']}]")
                self.allow_read(user, acl["read_topics"])
                for prefix in acl["group_prefixes"]:
                    self._tool("org.apache.kafka.tools.AclCommand", "--add", "--allow-principal", f"User:{user}",
                               "--operation", "Read", "--group", prefix, "--resource-pattern-type", "prefixed")
                entry["applied"] = digest
                done.append(user)
            state[user] = entry
            env_file = self.client_env_file(user)
            env_file.parent.mkdir(parents=True, exist_ok=True)
            env_file.write_text(
                f"CITYOPS_KAFKA_BOOTSTRAP=127.0.0.1:{self.cfg.kafka_sasl_port}\n"
                "CITYOPS_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\nCITYOPS_KAFKA_SASL_MECHANISM=SCRAM-SHA-512\n"
                f"CITYOPS_KAFKA_USERNAME={user}\nCITYOPS_KAFKA_PASSWORD={entry['password']}\n")
            env_file.chmod(0o600)
            self.users_file.write_text(json.dumps(state, indent=1))
            self.users_file.chmod(0o600)
        return done

    def allow_read(self, user: str, topics: list[str]) -> None:
        """ACLs: `user` may read (and describe) these topics."""
        args = [a for t in topics for a in ("--topic", t)]
        self._tool("org.apache.kafka.tools.AclCommand", "--add", "--allow-principal", f"User:{user}",
                   "--operation", "Read", "--operation", "Describe", *args)

    def _tool(self, main: str, *args: str) -> None:
        """Run one of Kafka's admin tools against the loopback listener; its output is shown only on failure."""
        cmd = [*self._java(main, "--bootstrap-server", self.bootstrap, *args)]
        cmd[1:3] = ["-Xms32m", "-Xmx256m"]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "KAFKA_HEAP_OPTS": ""})
        if r.returncode != 0:
            raise RuntimeError(f"kafka {main.rsplit('.', 1)[-1]} failed: {(r.stderr or r.stdout).strip()[-800:]}")

    def ensure_topics(self) -> list[str]:
        """Create every topic of schemas/topics.py that is missing; returns the ones created."""
        return asyncio.run(_ensure_topics(self.bootstrap))


async def _list_topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _ensure_topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from schemas.topics import KAFKA_TOPICS

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                t.name, num_partitions=t.partitions, replication_factor=1,
                topic_configs={"retention.ms": str(t.retention_ms), "cleanup.policy": t.cleanup_policy},
            )
            for t in KAFKA_TOPICS
            if t.name not in existing
        ]
        if new:
            await admin.create_topics(new)
        return [t.name for t in new]
    finally:
        await admin.close()


def libs_dir(cfg: StackConfig) -> Path:
    return cfg.state_dir / "kafka" / "libs"
