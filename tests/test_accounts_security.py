"""Accounts and logins: the shipped demo accounts (published passwords) load only where a demo or a test says
so, and the login endpoints of the console and the API cost the same for an unknown user, run their scrypt
off the event loop and lock an account or an address out after repeated failures."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from shared.notify.domain.auth import LoginGuard, LoginRefused, hash_password
from shared.notify.domain.config import DEMO_FLAG, ConfigError, load_roster

ROOT = Path(__file__).resolve().parents[1]
DEMO_ROSTER = ROOT / "config/notify/roster.yaml"
DEMO_CONSUMERS = ROOT / "shared/api/consumers.yaml"
PW = "a-city-password"
UNUSED_DB = "postgresql://unused@127.0.0.1:9/none"


@pytest.fixture
def no_demo(monkeypatch, tmp_path):
    """An environment as a city's deployment has it: no flag, and no local stack settings file to read it from."""
    monkeypatch.delenv(DEMO_FLAG, raising=False)
    monkeypatch.setenv("CITYOPS_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def _own_roster(d: Path) -> Path:
    """A city's own roster: no demo mark."""
    people = [
        {"id": "ana", "name": "Ana", "roles": ["dispatcher"], "password_hash": hash_password(PW)},
        {"id": "bo", "name": "Bo", "roles": ["viewer"], "password_hash": hash_password(PW)},
    ]
    path = d / "own-roster.yaml"
    path.write_text(yaml.safe_dump({"people": people}))
    return path


def _assert_refusal(message: str, path: Path) -> None:
    assert "\n" not in message, "one line"
    assert str(path) in message and "demo accounts" in message and "passwords are published" in message
    for what in (
        "CITYOPS_NOTIFY_ROSTER",
        "CITYOPS_API_ROSTER",
        "CITYOPS_API_CONSUMERS",
        "cityops notify hash-password",
        "CITYOPS_ALLOW_DEMO_ACCOUNTS=1",
    ):
        assert what in message, what


# --- 1. the demo rosters --------------------------------------------------------------------------------------


def test_the_shipped_rosters_are_marked_demo():
    for path in (DEMO_ROSTER, DEMO_CONSUMERS):
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["demo"] is True, path


def test_a_demo_roster_is_refused_without_the_flag_by_both_loaders(no_demo):
    """Before, the notification service and the API loaded the shipped demo accounts (passwords `demo-<id>`,
    one admin) by default, in the image and on Kubernetes too. Now a file marked `demo: true` stops the
    loader with one line saying what to do, unless CITYOPS_ALLOW_DEMO_ACCOUNTS=1."""
    from shared.api.deps import load_accounts

    with pytest.raises(ConfigError) as notify_err:
        load_roster(DEMO_ROSTER)
    _assert_refusal(str(notify_err.value), DEMO_ROSTER)
    with pytest.raises(ConfigError) as api_err:
        load_accounts(DEMO_ROSTER, DEMO_CONSUMERS)
    _assert_refusal(str(api_err.value), DEMO_ROSTER)
    # the consumers file on its own too (a city's roster beside the shipped consumers)
    with pytest.raises(ConfigError) as consumers_err:
        load_accounts(_own_roster(no_demo), DEMO_CONSUMERS)
    _assert_refusal(str(consumers_err.value), DEMO_CONSUMERS)


@pytest.mark.parametrize("value", ["0", "true", ""])
def test_only_1_allows_the_demo_accounts(no_demo, monkeypatch, value):
    monkeypatch.setenv(DEMO_FLAG, value)
    with pytest.raises(ConfigError):
        load_roster(DEMO_ROSTER)


def test_with_the_flag_the_demo_accounts_load(no_demo, monkeypatch):
    from shared.api.deps import load_accounts

    monkeypatch.setenv(DEMO_FLAG, "1")
    assert "sup-zhao" in load_roster(DEMO_ROSTER).by_id
    accounts = load_accounts(DEMO_ROSTER, DEMO_CONSUMERS)
    assert {"sup-zhao", "opendata-demo"} <= set(accounts)
    # an explicit answer (the API's settings) wins over the environment
    with pytest.raises(ConfigError):
        load_accounts(DEMO_ROSTER, allow_demo=False)


def test_the_local_stack_settings_file_allows_them(no_demo):
    """`cityops stack up` writes the flag into .state/stack.env, which every setting falls back to."""
    state = no_demo / "state"
    state.mkdir()
    (state / "stack.env").write_text(f"CITYOPS_DB_URL={UNUSED_DB}\n{DEMO_FLAG}=1\n")
    assert load_roster(DEMO_ROSTER).demo is True


def test_a_roster_without_the_mark_loads_without_the_flag(no_demo):
    from shared.api.deps import load_accounts

    own = _own_roster(no_demo)
    assert set(load_roster(own).by_id) == {"ana", "bo"}
    assert set(load_accounts(own, no_demo / "no-consumers.yaml")) == {"ana", "bo"}


def test_services_and_the_cli_refuse_the_demo_roster(no_demo):
    """The notification service, the API app and `cityops notify check` stop on the demo roster without the flag;
    the check says so in one error line."""
    from shared.api.app import build
    from shared.api.settings import ApiSettings
    from shared.notify.handlers import NotifyService
    from shared.notify.settings import NotifySettings

    with pytest.raises(ConfigError, match="demo accounts"):
        NotifyService(NotifySettings(db_url=UNUSED_DB, kafka_bootstrap="unused:9092", _env_file=None))
    with pytest.raises(ConfigError, match="demo accounts"):
        build(ApiSettings(db_url=UNUSED_DB, _env_file=None))
    # the settings read the flag as the loaders do
    assert ApiSettings(db_url=UNUSED_DB, allow_demo_accounts="1", _env_file=None).allow_demo_accounts is True
    build(ApiSettings(db_url=UNUSED_DB, allow_demo_accounts="1", _env_file=None))

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CITYOPS_")}
    env["CITYOPS_STATE_DIR"] = str(no_demo / "state")
    r = subprocess.run(
        [sys.executable, "-m", "shared.cli", "notify", "check"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stdout.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in r.stderr
    _assert_refusal(line, DEMO_ROSTER)
    r = subprocess.run(
        [sys.executable, "-m", "shared.cli", "notify", "check"],
        env={**env, DEMO_FLAG: "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith("ok: "), r.stdout + r.stderr


@pytest.mark.stack
def test_the_local_stack_runs_the_demo_accounts(stack_env):
    assert stack_env[DEMO_FLAG] == "1"


def test_compose_runs_the_demo_accounts_and_kubernetes_mounts_the_city_s_own():
    """The demo compose file sets the flag for every service that loads accounts; the Kubernetes pods of those
    services never get it: they read the roster and consumers from the `cityops-accounts` Secret."""
    from deploy.generate import ACCOUNTS_DIR, ACCOUNTS_SECRET
    from deploy.kustomize import build

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    loaders = {"notify": ["CITYOPS_NOTIFY_ROSTER"], "api": ["CITYOPS_API_ROSTER", "CITYOPS_API_CONSUMERS"]}
    for name in loaders:
        assert compose[name]["environment"][DEMO_FLAG] == "1", name
    assert "# the demo" in (ROOT / "docker-compose.yml").read_text()
    for overlay in ("prod", "dev"):
        docs = build(ROOT / "k8s/overlays" / overlay)
        for d in docs:
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                assert DEMO_FLAG not in {e["name"] for e in c.get("env", [])}, (
                    overlay,
                    d["metadata"]["name"],
                )
        for name, variables in loaders.items():
            pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)[
                "spec"
            ]["template"]["spec"]
            env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
            for var in variables:
                assert env[var].startswith(ACCOUNTS_DIR + "/"), (overlay, name, var)
            (vol,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == ACCOUNTS_SECRET]
            mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == vol["name"])
            assert mount["mountPath"] == ACCOUNTS_DIR and mount["readOnly"] is True
            keys = {i["key"] for i in vol["secret"]["items"]}
            assert {Path(env[var]).name for var in variables} <= keys
    assert "create secret generic cityops-accounts" in (ROOT / "docs/operations.md").read_text()


# --- 2. the login endpoints -----------------------------------------------------------------------------------


@pytest.fixture
def scrypt_calls(monkeypatch):
    """Every scrypt run (the real one), with the thread it ran in."""
    from shared.notify.domain import auth

    auth._dummy_hash()  # made once per process: not part of any login below
    calls: list[str] = []
    real = hashlib.scrypt

    def counting(*a, **kw):
        calls.append(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


@pytest.fixture
def api_app(no_demo):
    from shared.api.app import build
    from shared.api.settings import ApiSettings

    return build(
        ApiSettings(
            db_url=UNUSED_DB,
            api_roster=_own_roster(no_demo),
            api_consumers=no_demo / "none.yaml",
            api_session_secret="s",
            _env_file=None,
        )
    )


@pytest.fixture
def notify_app(no_demo):
    from fastapi import FastAPI

    from shared.notify import endpoints
    from shared.notify.handlers import NotifyService
    from shared.notify.settings import NotifySettings
    from shared.service import Readiness, health_app

    routing = {
        "timezone": "UTC",
        "rules": [{"name": "all", "tiers": [{"recipients": ["ana"], "channels": ["webhook"]}]}],
    }
    (no_demo / "routing.yaml").write_text(yaml.safe_dump(routing))
    s = NotifySettings(
        db_url=UNUSED_DB,
        kafka_bootstrap="unused:9092",
        notify_roster=_own_roster(no_demo),
        notify_routing=no_demo / "routing.yaml",
        notify_session_secret="s",
        _env_file=None,
    )
    svc = NotifyService(s, Readiness("db", "kafka", "channels"))
    return endpoints.build(svc, health_app("notify", svc.readiness, FastAPI()))


LOGINS = {"api": ("api_app", "/api/v1/token"), "notify": ("notify_app", "/api/login")}


def _client(request, which: str, address: str = "10.1.2.3") -> tuple[httpx.AsyncClient, str]:
    app = request.getfixturevalue(LOGINS[which][0])
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test"), LOGINS[which][1]


def _message(r: httpx.Response) -> str:
    body = r.json()
    return body.get("detail") or body.get("message") or ""


@pytest.mark.parametrize("which", ["api", "notify"])
async def test_the_sixth_wrong_password_is_refused_with_retry_after(request, which):
    """Before, the login endpoints took any number of guesses. Now five failures for an account within 15
    minutes lock it: the sixth attempt, even with the right password, gets 429, a Retry-After and a bilingual
    message saying when to try again."""
    http, path = _client(request, which)
    async with http:
        for _ in range(5):
            r = await http.post(path, json={"username": "ana", "password": "wrong-guess"})
            assert r.status_code == 401, r.text
        for password in ("wrong-guess", PW):
            r = await http.post(path, json={"username": "ana", "password": password})
            assert r.status_code == 429, r.text
            assert 800 < int(r.headers["retry-after"]) <= 900
            assert "分钟后再试" in _message(r) and "try again in 15 min" in _message(r)
        # another account is not locked by ana's failures
        assert (await http.post(path, json={"username": "bo", "password": PW})).status_code == 200


@pytest.mark.parametrize("which", ["api", "notify"])
async def test_an_unknown_user_costs_the_same_scrypt_as_a_wrong_password(request, which, scrypt_calls):
    """Before, an unknown user name was answered at once and a wrong password after a scrypt: the time told
    which names exist. Now both run one scrypt, in a worker thread, not on the event loop."""
    http, path = _client(request, which)
    scrypt_calls.clear()  # the roster's hashes, made above
    async with http:
        r = await http.post(path, json={"username": "nobody-here", "password": "wrong-guess"})
        assert r.status_code == 401
        unknown = len(scrypt_calls)
        r = await http.post(path, json={"username": "ana", "password": "wrong-guess"})
        assert r.status_code == 401
        assert unknown == 1 and len(scrypt_calls) == 2
        assert (
            _message(r)
            and r.json() == (await http.post(path, json={"username": "nobody-too", "password": "x"})).json()
        ), "the same answer for both"
    assert threading.main_thread().name not in scrypt_calls, "scrypt ran on the event loop's thread"


@pytest.mark.parametrize("which", ["api", "notify"])
async def test_a_correct_login_below_the_limit_works_and_resets_the_count(request, which):
    http, path = _client(request, which)
    async with http:
        for _ in range(2):
            for _ in range(4):
                assert (
                    await http.post(path, json={"username": "ana", "password": "nope"})
                ).status_code == 401
            # four failures: still below the limit; the success clears them, so the next four are not locked
            r = await http.post(path, json={"username": "ana", "password": PW})
            assert r.status_code == 200, r.text
            assert r.json()["token"]


async def test_one_address_guessing_many_names_is_slowed_but_never_locks_others_out(request):
    """Spraying one password over many names from one address (behind an ingress that address is everyone's):
    past 20 failures each attempt from it waits before it is checked, a second more per failure, but a right
    password still logs in, administrators' too. Before, 20 failures refused every name from that address."""
    app = request.getfixturevalue("api_app")
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    app.state.login_guard.sleep = sleep
    http, path = _client(request, "api", address="10.9.9.9")
    async with http:
        for i in range(22):
            assert (
                await http.post(path, json={"username": f"user-{i}", "password": "Spring2026"})
            ).status_code == 401
        assert waits == [1.0, 2.0]  # the 21st and 22nd failures waited
        r = await http.post(path, json={"username": "ana", "password": PW})
        assert r.status_code == 200, r.text
        assert waits[-1] == 3.0


async def test_the_address_delay_is_capped():
    guard = LoginGuard(max_failures_per_address=2, max_address_delay_s=4.0)
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    guard.sleep = sleep
    stored = hash_password(PW)
    for i in range(8):
        assert await guard.verify(f"u{i}", "nope", stored, "10.0.0.7") is False
    assert waits == [1.0, 2.0, 3.0, 4.0, 4.0, 4.0]
    assert guard.address_delay("10.0.0.8") == 0.0


async def test_the_lock_ends_when_the_oldest_failure_leaves_the_window():
    now = [1000.0]
    guard = LoginGuard(max_failures=5, window_s=900, clock=lambda: now[0])
    stored = hash_password(PW)
    for _ in range(5):
        assert await guard.verify("ana", "nope", stored, "10.0.0.1") is False
        now[0] += 10
    with pytest.raises(LoginRefused) as refused:
        await guard.verify("ana", PW, stored, "10.0.0.1")
    assert refused.value.retry_after_s == 1000 + 900 - now[0]
    now[0] = 1000 + 900 + 1  # the first failure has left the window: four remain, below the limit
    assert await guard.verify("ana", PW, stored, "10.0.0.1") is True
    assert guard.retry_after("ana", "10.0.0.1") == 0
