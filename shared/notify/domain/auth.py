"""Passwords (salted scrypt), the login guard, and signed bearer/session tokens (HMAC-SHA256), standard
library only."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$<salt hex>$<hash hex>`, the form the roster's `password_hash` takes."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


@functools.cache
def _dummy_hash() -> str:
    """What an unknown user's password is checked against: the same scrypt as a real one."""
    return hash_password(secrets.token_urlsafe(16))


def _check(password: str, stored: str | None) -> bool:
    # an unknown user (or one without a password) costs the same scrypt as a wrong password: the time of
    # the answer must not tell which user names exist
    ok = verify_password(password, stored or _dummy_hash())
    return ok and bool(stored)


class LoginRefused(Exception):
    """Too many failed logins for the account or from the address: try again after `retry_after_s`."""

    def __init__(self, retry_after_s: float):
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        minutes = math.ceil(self.retry_after_s / 60)
        self.message = (
            f"登录失败次数过多，请 {minutes} 分钟后再试；忘记密码请联系管理员 · too many failed logins for this "
            f"account or from this address: try again in {minutes} min ({self.retry_after_s} s), or ask the "
            "CityOps administrator to reset your password"
        )
        super().__init__(self.message)


class LoginGuard:
    """Checks logins for the console, the field app and the API.

    Every attempt costs one scrypt, run in a thread so logins do not stall the event loop, and an unknown
    user costs the same as a known one. Failures are counted per user name and per client address over
    `window_s`. At `max_failures` for a name further attempts for it are refused without checking until the
    oldest failure leaves the window; a success clears the name's count. An address is never locked out: many
    users may share one (an office, or every user behind the ingress when it does not forward their address),
    and one guesser there must not lock out everyone, administrators included. Past
    `max_failures_per_address` each attempt from it waits a second more per failure beyond the limit (at most
    `max_address_delay_s`) before it is checked, which slows a guesser spraying many names. Counts live in the
    process (per replica).
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        max_failures_per_address: int = 20,
        window_s: float = 900.0,
        max_address_delay_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.limits = {"user": max_failures, "addr": max_failures_per_address}
        self.window_s = window_s
        self.max_address_delay_s = max_address_delay_s
        self.clock = clock
        self.sleep = sleep
        self.failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self.failures.get(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def _sweep(self, now: float) -> None:
        for key in [k for k in self.failures if not self._recent(k, now)]:
            del self.failures[key]

    def retry_after(self, username: str, address: str | None = None) -> float:
        """Seconds until a login for `username` is checked again; 0 if it is now (addresses are slowed, not
        refused: `address_delay`)."""
        now = self.clock()
        q = self._recent(("user", username), now)
        limit = self.limits["user"]
        return q[len(q) - limit] + self.window_s - now if len(q) >= limit else 0.0

    def address_delay(self, address: str | None) -> float:
        """Seconds an attempt from `address` waits before it is checked."""
        if not address:
            return 0.0
        excess = len(self._recent(("addr", address), self.clock())) - self.limits["addr"] + 1
        return min(float(max(excess, 0)), self.max_address_delay_s)

    @staticmethod
    def _keys(username: str, address: str | None) -> list[tuple[str, str]]:
        return [("user", username)] + ([("addr", address)] if address else [])

    async def verify(self, username: str, password: str, stored: str | None, address: str | None) -> bool:
        """True for the right password. Raises LoginRefused while the name is locked out."""
        wait = self.retry_after(username)
        if wait > 0:
            raise LoginRefused(wait)
        if delay := self.address_delay(address):
            await self.sleep(delay)
            if (wait := self.retry_after(username)) > 0:  # locked while this attempt waited
                raise LoginRefused(wait)
        now = self.clock()
        if len(self.failures) > 10_000:
            self._sweep(now)
        keys = self._keys(username, address)
        # counted before the check: concurrent attempts must not all slip in under the limit
        for key in keys:
            self.failures[key] = self._recent(key, now)
            self.failures[key].append(now)
        ok = await asyncio.to_thread(_check, password, stored)
        if ok:
            self.failures.pop(keys[0], None)
            for key in keys[1:]:
                q = self.failures.get(key)
                if q is not None and now in q:
                    q.remove(now)
        return ok


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sign_token(secret: str, *, sub: str, role: str, ttl_s: int = 12 * 3600) -> str:
    body = _b64(json.dumps({"sub": sub, "role": role, "exp": int(time.time()) + ttl_s}).encode())
    sig = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


def read_token(secret: str, token: str) -> dict | None:
    """The claims of a valid, unexpired token; None otherwise."""
    try:
        body, sig = token.split(".")
    except ValueError:
        return None
    want = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want, sig):
        return None
    try:
        claims = json.loads(_unb64(body))
    except ValueError:
        return None
    if claims.get("exp", 0) < time.time():
        return None
    return claims


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` over `<timestamp>.<body>`; the timestamp stops replays of old requests."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"
