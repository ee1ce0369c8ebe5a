"""`python -m deploy.mqtt --out DIR [--gateway ID ...] [--person ID ...]`: Mosquitto password and ACL files
for a container deployment, from the same ACL model as the local stack (shared/stack/mosquitto.py).

Writes DIR/passwd, DIR/acl (hashes and rules: what the broker mounts) and DIR/credentials.json (the plain
passwords the services read through CITYOPS_MQTT_CREDENTIALS). Existing passwords are kept, so rerunning
it after adding a gateway does not log the others out. Mosquitto rereads both files on SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from pathlib import Path

from shared.stack.mosquitto import SERVICE_ACL, hash_password


def write(out: Path, gateways: list[str], people: list[str]) -> dict[str, dict[str, str]]:
    out.mkdir(parents=True, exist_ok=True)
    cred_file = out / "credentials.json"
    creds: dict[str, dict[str, str]] = {"services": {}, "gateways": {}, "people": {}}
    if cred_file.exists():
        creds.update(json.loads(cred_file.read_text()))
    for svc in SERVICE_ACL:
        creds["services"].setdefault(svc, secrets.token_urlsafe(18))
    for gw in gateways:
        creds["gateways"].setdefault(gw, secrets.token_urlsafe(18))
    for person in people:
        creds["people"].setdefault(person, secrets.token_urlsafe(18))

    passwd, acl = [], []
    for svc, rules in SERVICE_ACL.items():
        passwd.append(f"{svc}:{hash_password(creds['services'][svc])}")
        acl += [f"user {svc}", *rules, ""]
    for gw, pw in sorted(creds["gateways"].items()):
        passwd.append(f"{gw}:{hash_password(pw)}")
        acl += [f"user {gw}", f"topic write city/{gw}/#", ""]
    for person, pw in sorted(creds["people"].items()):
        passwd.append(f"{person}:{hash_password(pw)}")
        acl += [f"user {person}", f"topic read field/{person}/#", ""]
    _write(cred_file, json.dumps(creds, indent=1), 0o600)
    # the broker runs as another user than the services: hashes and rules are world-readable, passwords not
    _write(out / "passwd", "\n".join(passwd) + "\n", 0o644)
    _write(out / "acl", "\n".join(acl) + "\n", 0o644)
    return creds


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.mqtt", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder the broker and the services mount")
    p.add_argument("--gateway", action="append", default=[], help="gateway id (may publish under city/<id>/)")
    p.add_argument("--person", action="append", default=[], help="field worker id (may read field/<id>/)")
    a = p.parse_args(argv)
    creds = write(a.out, a.gateway, a.person)
    print(f"MQTT users written to {a.out}: " + ", ".join(f"{len(v)} {k}" for k, v in creds.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
