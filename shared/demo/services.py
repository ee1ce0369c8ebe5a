"""Starting the suite's services as real processes for the demo (and stopping them)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class ServiceProc:
    name: str
    argv: list[str]
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *self.argv, "--port", str(self.port)],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
        )

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-12:])
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; last log lines:\n{tail}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def suite(log_dir: Path, base_port: int = 8100) -> list[ServiceProc]:
    """Every service that exists in this checkout, in start order."""
    out = [
        ServiceProc("ingest-gateway", ["ingest", "gateway"], base_port + 1, log_dir / "ingest-gateway.log"),
        ServiceProc("ingest-sink", ["ingest", "sink"], base_port + 2, log_dir / "ingest-sink.log"),
    ]
    optional = [
        ("air-quality", "services.air_quality.app", ["air", "serve"], 10),
        ("weather", "services.weather.app", ["weather", "serve"], 11),
        ("water", "services.water.app", ["water", "serve"], 12),
        ("emergency", "services.emergency.app", ["emergency", "serve"], 13),
        ("notify", "shared.notify.app", ["notify", "serve"], 20),
    ]
    for name, module, argv, off in optional:
        if _has(module):
            out.append(ServiceProc(name, argv, base_port + off, log_dir / f"{name}.log"))
    return out


def wait_ready(procs: list[ServiceProc], timeout: float = 180) -> dict[str, float]:
    t0 = time.monotonic()
    took: dict[str, float] = {}
    while time.monotonic() - t0 < timeout:
        for p in procs:
            if p.name not in took and p.ready():
                took[p.name] = time.monotonic() - t0
        if len(took) == len(procs):
            return took
        time.sleep(0.5)
    missing = [p.name for p in procs if p.name not in took]
    raise RuntimeError(f"services not ready after {timeout:.0f} s: {', '.join(missing)} (see their logs)")
