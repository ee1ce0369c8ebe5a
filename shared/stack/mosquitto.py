"""Mosquitto (Debian's package) with password authentication and ACLs from the sensor registry.

Users:
  - one per gateway, which may publish only under `city/<gateway_id>/#`;
  - service users: `svc-ingest` reads `city/#`; `svc-notify` writes `field/#`;
  - one per field worker, who may read only `field/<person_id>/#`.
Credentials live in `<state>/mosquitto/credentials.json` (mode 600). `apply()` rewrites the
password and ACL files and makes the running broker reload them (SIGHUP).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
from pathlib import Path

from shared.stack.config import StackConfig
from shared.stack.proc import port_open, read_pid, spawn, stop, wait_until

SERVICE_ACL = {
    "svc-ingest": ["topic read city/#"],
    "svc-notify": ["topic write field/#"],
    "svc-monitor": ["topic read city/#", "topic read field/#"],
}


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = 101) -> str:
    """Mosquitto 2 password file entry: `$7$<iterations>$<salt b64>$<pbkdf2-sha512 b64>`."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class Mosquitto:
    name = "mosquitto"

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.home = cfg.dir("mosquitto")
        self.conf = self.home / "mosquitto.conf"
        self.passwd = self.home / "passwd"
        self.acl = self.home / "acl"
        self.pid_file = self.home / "mosquitto.pid"
        self.log_file = self.home / "mosquitto.log"
        self.cred_file = self.home / "credentials.json"

    # credentials -------------------------------------------------------------------------
    def credentials(self) -> dict[str, dict]:
        if self.cred_file.exists():
            return json.loads(self.cred_file.read_text())
        return {"services": {}, "gateways": {}, "people": {}}

    def password_for(self, group: str, user: str) -> str:
        return self.credentials()[group][user]

    def apply(self, gateways: list[str] | None = None, people: list[str] | None = None) -> None:
        """Add users for these gateways and field workers (existing passwords are kept)."""
        creds = self.credentials()
        for svc in SERVICE_ACL:
            creds["services"].setdefault(svc, secrets.token_urlsafe(12))
        for gw in gateways or []:
            creds["gateways"].setdefault(gw, secrets.token_urlsafe(12))
        for person in people or []:
            creds["people"].setdefault(person, secrets.token_urlsafe(12))
        self.cred_file.write_text(json.dumps(creds, indent=1))
        self.cred_file.chmod(0o600)

        lines, acl = [], []
        for svc, rules in SERVICE_ACL.items():
            lines.append(f"{svc}:{hash_password(creds['services'][svc])}")
            acl += [f"user {svc}", *rules, ""]
        for gw, pw in sorted(creds["gateways"].items()):
            lines.append(f"{gw}:{hash_password(pw)}")
            acl += [f"user {gw}", f"topic write city/{gw}/#", ""]
        for person, pw in sorted(creds["people"].items()):
            lines.append(f"{person}:{hash_password(pw)}")
            acl += [f"user {person}", f"topic read field/{person}/#", ""]
        _atomic_write(self.passwd, "\n".join(lines) + "\n")
        _atomic_write(self.acl, "\n".join(acl) + "\n")
        pid = read_pid(self.pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    # lifecycle ---------------------------------------------------------------------------
    def write_config(self) -> None:
        persistence = self.cfg.dir("mosquitto", "data")
        self.conf.write_text(
            "\n".join([
                f"listener {self.cfg.mqtt_port} 127.0.0.1",
                "allow_anonymous false",
                f"password_file {self.passwd}",
                f"acl_file {self.acl}",
                "persistence true",
                f"persistence_location {persistence}/",
                "autosave_interval 5",
                # queue for offline persistent sessions (the gateway after a crash)
                "max_queued_messages 200000",
                "max_inflight_messages 1000",
                "max_packet_size 1048576",
                "log_type error",
                "log_type warning",
                "log_type notice",
                f"log_dest file {self.log_file}",
                "",
            ])
        )

    def running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def up(self) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            raise RuntimeError("Mosquitto is missing: run `apt-get install -y mosquitto mosquitto-clients`")
        if not self.passwd.exists():
            self.apply()
        if self.running() and port_open(self.cfg.mqtt_port):
            return
        if port_open(self.cfg.mqtt_port):
            raise RuntimeError(f"port {self.cfg.mqtt_port} is taken; set CITYOPS_MQTT_PORT to a free port")
        self.write_config()
        if os.geteuid() == 0:
            # mosquitto drops root privileges to user `mosquitto`; it must read its files
            import pwd

            try:
                pw = pwd.getpwnam("mosquitto")
                for p in (self.home, *self.home.rglob("*")):
                    os.chown(p, pw.pw_uid, pw.pw_gid)
            except KeyError:
                pass
        spawn([exe, "-c", str(self.conf)], log_file=self.home / "stdout.log", pid_file=self.pid_file)
        wait_until(lambda: port_open(self.cfg.mqtt_port), timeout=20, what="Mosquitto", log_file=self.log_file)

    def healthy(self) -> bool:
        return self.running() and port_open(self.cfg.mqtt_port)

    def down(self) -> bool:
        return stop(self.pid_file)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o640)
    try:
        import pwd

        pw = pwd.getpwnam("mosquitto")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    except (KeyError, PermissionError):
        pass
    tmp.replace(path)
