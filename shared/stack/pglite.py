"""TimescaleDB 2.23 compiled to WebAssembly (PGlite), served by `stack/pglite/server.mjs`.

The local stack's PostgreSQL has no TimescaleDB; this is how the `.timescale.sql`
migrations and the queries that lean on TimescaleDB are run against the real extension.
The database lives in memory: every start is a fresh, empty server.

PGlite serves ONE client connection at a time (a second one waits in a queue), and it drops
the connection on COPY and on pipeline mode (psycopg's `executemany`): use plain `execute`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from types import TracebackType

from shared.stack.config import PROJECT_ROOT, StackConfig
from shared.stack.proc import port_open, read_pid, spawn, stop, wait_until

PACKAGE_DIR = PROJECT_ROOT / "stack" / "pglite"
# a marker that the extension's package (not just some node_modules) is installed
_INSTALLED = PACKAGE_DIR / "node_modules" / "@unni-craftsman" / "pglite" / "package.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PGliteTimescale:
    """Start/stop the WebAssembly TimescaleDB server; a context manager for tests.

    >>> with PGliteTimescale() as ts:
    ...     conn = psycopg.connect(ts.conninfo, autocommit=True)
    """

    name = "pglite"

    def __init__(
        self, cfg: StackConfig | None = None, *, port: int | None = None, start_timeout: float = 120.0
    ):
        self.cfg = cfg or StackConfig.from_env()
        self.home = self.cfg.dir("pglite")
        env_port = os.environ.get("CITYOPS_PGLITE_PORT")
        self.port = port or (int(env_port) if env_port else _free_port())
        # one pid file per port, so that two test runs sharing a checkout do not stop each other
        self.pid_file = self.home / f"pglite-{self.port}.pid"
        self.log_file = self.home / f"pglite-{self.port}.log"
        self.start_timeout = start_timeout
        self.startup_seconds: float | None = None

    @property
    def conninfo(self) -> str:
        # PGlite accepts any password; it speaks neither GSSAPI nor TLS, so say so up front
        return (
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres password=postgres"
            " gssencmode=disable sslmode=disable connect_timeout=5"
        )

    def ensure_packages(self) -> None:
        """Install the pinned npm packages of stack/pglite/ if they are not there yet."""
        if _INSTALLED.exists():
            return
        if shutil.which("node") is None or shutil.which("npm") is None:
            raise RuntimeError(
                "Node.js and npm are needed for TimescaleDB in WebAssembly: run `apt-get install -y nodejs npm`"
            )
        # pglite-socket declares a peer dependency on upstream @electric-sql/pglite; the TimescaleDB
        # build replaces it, so the peer check must be skipped
        verb = "ci" if (PACKAGE_DIR / "package-lock.json").exists() else "install"
        print(f"  pglite: npm {verb} in {PACKAGE_DIR} (first run only) …", flush=True)
        subprocess.run(
            ["npm", verb, "--legacy-peer-deps", "--no-audit", "--no-fund"], cwd=PACKAGE_DIR, check=True
        )

    def running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def up(self) -> None:
        """Start a fresh server and wait until psycopg can run a query on it."""
        self.ensure_packages()
        # a server left on this port by an interrupted run holds state we do not want: replace it
        stop(self.pid_file)
        if port_open(self.port):
            raise RuntimeError(
                f"port {self.port} is taken by another program; set CITYOPS_PGLITE_PORT to a free port"
            )
        self.log_file.write_text("")
        started = time.monotonic()
        spawn(
            ["node", "server.mjs", str(self.port)],
            log_file=self.log_file,
            pid_file=self.pid_file,
            cwd=PACKAGE_DIR,
        )
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="PGlite (TimescaleDB in WebAssembly)",
            log_file=self.log_file,
        )
        self.startup_seconds = time.monotonic() - started

    def healthy(self) -> bool:
        if not self.running():
            tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"PGlite server exited while starting. Last log lines:\n{tail}")
        if not port_open(self.port):
            return False
        import psycopg

        try:
            # closed at once: the server serves one connection at a time
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.OperationalError:
            return False
        return True

    def down(self) -> bool:
        stopped = stop(self.pid_file, timeout=20)
        # ports are random, so logs would pile up; a failed start has already shown its tail
        self.log_file.unlink(missing_ok=True)
        return stopped

    def __enter__(self) -> PGliteTimescale:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()
