"""HTTP: the REST API for the mobile app and the dispatcher console (page, live stream, actions).

Login gives a signed token, sent back as a bearer token (mobile app) or a session cookie (console).
Roles: viewer (read), dispatcher (acknowledge, assign, resolve), field_staff (own tasks only), admin.
Domain errors are JSON `{"error", "message"}` with their status; 422 only for malformed payloads.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from shared.notify import repository
from shared.notify.domain.auth import LoginGuard, LoginRefused, read_token, sign_token
from shared.notify.handlers import NotifyError, NotifyService

CONSOLE = Path(__file__).parent / "console"
COOKIE = "cityops_session"
RANK = {"field_staff": 0, "viewer": 1, "dispatcher": 2, "admin": 3}


class User(BaseModel):
    id: str
    name: str
    role: str
    language: str


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=2000)


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    person_id: str = Field(min_length=1)


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=2000)
    photo_urls: list[HttpUrl] = Field(default_factory=list, max_length=20)


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=3, max_length=2000, description="why the task cannot be taken")


class LocationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    available: bool | None = None


def _jsonable(obj):
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise TypeError(type(obj).__name__)


def _j(data, status: int = 200) -> Response:
    return Response(
        json.dumps(data, default=_jsonable, ensure_ascii=False),
        status_code=status,
        media_type="application/json",
    )


def current_user(request: Request) -> User:
    svc: NotifyService = request.app.state.notify
    token = None
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    token = token or request.cookies.get(COOKIE)
    claims = read_token(svc.session_secret, token) if token else None
    if claims is None or claims["sub"] not in svc.people:
        raise NotifyError(
            401,
            "not_logged_in",
            "log in first: POST /api/login with username and password, then "
            "send the token as 'Authorization: Bearer <token>'",
        )
    p = svc.people[claims["sub"]]
    # a token lives 12 h and survives a restart; an account demoted in the roster since must not keep
    # the role it was issued with
    if claims.get("role") not in p.roles:
        raise NotifyError(
            401,
            "role_withdrawn",
            f"角色已变更，请重新登录 · this token's role {claims.get('role')!r} is no longer yours: "
            "log in again (POST /api/login) for a token with your current role",
        )
    return User(id=p.id, name=p.name, role=claims["role"], language=p.language)


def _without_addresses(deliveries: list[dict]) -> list[dict]:
    """Delivery rows with the recipients' phone numbers and e-mail addresses taken out, for viewers."""
    for d in deliveries:
        address = d.get("address")
        d["address"] = None
        # a channel's error text quotes the address it was refused for ("SMS provider refused +86...")
        if address and isinstance(d.get("error"), str):
            d["error"] = d["error"].replace(address, "<address>")
    return deliveries


def _only_reads(user: User) -> bool:
    """Below dispatcher and not the crew: reads the board, reaches and finds nobody (viewers)."""
    return user.role not in ("admin", "field_staff") and RANK.get(user.role, -1) < RANK["dispatcher"]


def _without_rescue_position(task: dict) -> dict:
    """A task about a person (a worker's rescue: its evidence names the worker's pseudonym) without where the
    worker is or who, for viewers; as the city's common webhook gets it (handlers._task_push). Dispatchers,
    admins and the assigned crew keep it: they must find the person."""
    evidence = task.get("evidence")
    worker = evidence.get("worker") if isinstance(evidence, dict) else None
    if not (isinstance(worker, str) and worker):
        return task
    out = dict(
        task,
        lat=None,
        lon=None,
        # the map picture, the zone, the pseudonym; the description names the worker
        evidence={},
        description_zh=None,
        description_en=None,
        title_zh=str(task.get("title_zh", "")).replace(worker, "***"),
        title_en=str(task.get("title_en", "")).replace(worker, "***"),
    )
    if "events" in out:
        # the crew's notes and photos say where they found the person
        out["events"] = [dict(e, note=None, evidence={}) for e in out["events"]]
    return out


def need(min_role: str):
    def dep(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role != "admin" and RANK.get(user.role, -1) < RANK[min_role]:
            raise NotifyError(
                403, "forbidden", f"role {user.role!r} may not do this; it needs {min_role!r} or admin"
            )
        return user

    return dep


AnyUser = Annotated[User, Depends(current_user)]
Viewer = Annotated[User, Depends(need("viewer"))]
Dispatcher = Annotated[User, Depends(need("dispatcher"))]


def build(svc: NotifyService, app: FastAPI) -> FastAPI:
    """Add the API and the console to `app` (the service's health app)."""
    app.state.notify = svc

    guard = LoginGuard()

    @app.exception_handler(NotifyError)
    async def _domain_error(request: Request, exc: NotifyError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_payload(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse(
            {
                "error": "invalid_request",
                "message": "the request body or parameters are invalid; fix: " + "; ".join(problems),
                "problems": problems,
            },
            status_code=422,
        )

    api = APIRouter(prefix="/api")

    @api.post("/login", summary="Log in; returns a bearer token and sets the console session cookie")
    async def login(body: LoginIn, request: Request, response: Response):
        p = svc.people.get(body.username)
        try:
            ok = await guard.verify(
                body.username,
                body.password,
                p.password_hash if p else None,
                request.client.host if request.client else None,
            )
        except LoginRefused as exc:
            return JSONResponse(
                {"error": "too_many_failures", "message": exc.message},
                status_code=429,
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        if p is None or not ok:
            raise NotifyError(401, "bad_credentials", "unknown user or wrong password")
        role = max(p.roles, key=lambda r: RANK[r])
        token = sign_token(svc.session_secret, sub=p.id, role=role)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600)
        return {"token": token, "user": {"id": p.id, "name": p.name, "role": role, "language": p.language}}

    @api.post("/logout")
    async def logout(response: Response) -> dict:
        response.delete_cookie(COOKIE)
        return {"ok": True}

    @api.get("/me")
    async def me(user: AnyUser) -> User:
        return user

    @api.get("/alerts", summary="Alerts, newest change first")
    async def alerts(user: Viewer, limit: int = 200):
        async with svc.db.connection() as conn:
            return _j(await repository.list_alerts(conn, limit=min(max(limit, 1), 1000)))

    @api.get("/alerts/{alert_id}")
    async def alert(alert_id: str, user: Viewer):
        async with svc.db.connection() as conn:
            a = await repository.get_alert(conn, alert_id)
            if a is None:
                raise NotifyError(404, "alert_not_found", f"no alert {alert_id!r}")
            deliveries = await repository.deliveries_for(conn, alert_id)
        # where a person is reached is personal data: only those who dispatch need it
        if user.role != "admin" and RANK[user.role] < RANK["dispatcher"]:
            deliveries = _without_addresses(deliveries)
        a["deliveries"] = deliveries
        return _j(a)

    @api.post("/alerts/{alert_id}/acknowledge", summary="Acknowledge: stops the escalation (audited)")
    async def acknowledge(alert_id: str, user: Dispatcher):
        async with svc.db.connection() as conn:
            a = await repository.acknowledge_alert(conn, alert_id, user.id, user.role)
        if a is None:
            raise NotifyError(404, "alert_not_found", f"no alert {alert_id!r}")
        return _j(a)

    @api.post("/alerts/{alert_id}/resolve", summary="Resolve (audited)")
    async def resolve(alert_id: str, user: Dispatcher, body: ResolveIn | None = None):
        async with svc.db.connection() as conn:
            a = await repository.resolve_alert(
                conn, alert_id, user.id, user.role, body.note if body else None
            )
        if a is None:
            raise NotifyError(404, "alert_not_found", f"no alert {alert_id!r}")
        return _j(a)

    @api.get("/tasks", summary="Field tasks; field staff see only their own")
    async def tasks(user: AnyUser):
        async with svc.db.connection() as conn:
            rows = await repository.list_tasks(conn, assignee=user.id if user.role == "field_staff" else None)
        if _only_reads(user):
            rows = [_without_rescue_position(r) for r in rows]
        return _j(rows)

    @api.get("/tasks/{task_id}")
    async def task(task_id: str, user: AnyUser):
        async with svc.db.connection() as conn:
            t = await repository.get_task(conn, task_id)
            if t is None or (user.role == "field_staff" and t["assignee"] != user.id):
                # field staff cannot learn whether someone else's task exists
                raise NotifyError(404, "task_not_found", f"no field task {task_id!r} for you")
            t["events"] = await repository.task_events(conn, task_id)
        return _j(_without_rescue_position(t) if _only_reads(user) else t)

    @api.post("/tasks/{task_id}/assign", summary="Dispatcher assigns a task to a person (audited)")
    async def assign(task_id: str, body: AssignIn, user: Dispatcher):
        return _j(
            await svc.transition(task_id, "assigned", actor=user.id, role=user.role, person_id=body.person_id)
        )

    async def _step(task_id: str, new: str, user: User, note: str | None, evidence: dict | None = None):
        if user.role == "viewer":
            raise NotifyError(403, "forbidden", "viewers cannot change tasks")
        return _j(
            await svc.transition(task_id, new, actor=user.id, role=user.role, note=note, evidence=evidence)
        )

    @api.post("/tasks/{task_id}/accept")
    async def accept(task_id: str, user: AnyUser, body: StepIn | None = None):
        return await _step(task_id, "accepted", user, body.note if body else None)

    @api.post("/tasks/{task_id}/on_site")
    async def on_site(task_id: str, user: AnyUser, body: StepIn | None = None):
        return await _step(task_id, "on_site", user, body.note if body else None)

    @api.post("/tasks/{task_id}/done", summary="Finish a task with evidence (notes, photo links)")
    async def done(task_id: str, body: StepIn, user: AnyUser):
        evidence = (
            {"photos": [str(u) for u in body.photo_urls], "note": body.note}
            if (body.photo_urls or body.note)
            else {}
        )
        return await _step(task_id, "done", user, body.note, evidence)

    @api.post("/tasks/{task_id}/reject", summary="Reject; the task is reassigned to the next best person")
    async def reject(task_id: str, body: RejectIn, user: AnyUser):
        return await _step(task_id, "rejected", user, body.reason)

    @api.post("/me/location", summary="The phone reports where its owner is and whether they take work")
    async def location(body: LocationIn, user: AnyUser) -> dict:
        if user.role != "field_staff":
            raise NotifyError(403, "forbidden", "only field staff report a location")
        async with svc.db.connection() as conn:
            await repository.set_staff_state(conn, user.id, body.lat, body.lon, body.available)
        return {"ok": True}

    @api.get("/summary", summary="Delivery counts and latency per channel, and the escalations")
    async def summary(user: Viewer):
        async with svc.db.connection() as conn:
            return _j(await repository.delivery_summary(conn))

    @api.get("/people", summary="Field staff, for the assign menu and the map")
    async def people(user: Viewer) -> list[dict]:
        return [
            {"id": p.id, "name": p.name, "lat": p.lat, "lon": p.lon, "skills": p.skills}
            for p in svc.roster.people
            if "field_staff" in p.roles
        ]

    @api.get("/stream", summary="Server-sent events: alert and task changes")
    async def stream(request: Request, user: AnyUser):
        async def events():
            since_alert = since_task = None
            while not await request.is_disconnected():
                async with svc.db.connection() as conn:
                    if user.role != "field_staff":
                        rows = await repository.list_alerts(conn, since=since_alert, limit=200)
                        if rows:
                            since_alert = max(r["updated_at"] for r in rows)
                            yield f"event: alerts\ndata: {json.dumps(rows, default=_jsonable, ensure_ascii=False)}\n\n"
                    cur = await conn.execute(
                        "SELECT * FROM field_tasks WHERE (%s::timestamptz IS NULL OR updated_at > %s)"
                        " AND (%s::text IS NULL OR assignee = %s) ORDER BY updated_at LIMIT 500",
                        (
                            since_task,
                            since_task,
                            user.id if user.role == "field_staff" else None,
                            user.id if user.role == "field_staff" else None,
                        ),
                    )
                    cols = [d.name for d in cur.description]
                    trows = [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]
                    if trows:
                        since_task = max(r["updated_at"] for r in trows)
                        if _only_reads(user):
                            trows = [_without_rescue_position(r) for r in trows]
                        yield f"event: tasks\ndata: {json.dumps(trows, default=_jsonable, ensure_ascii=False)}\n\n"
                yield ": keep-alive\n\n"
                await asyncio.sleep(1.0)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def console() -> HTMLResponse:
        return HTMLResponse((CONSOLE / "index.html").read_text(encoding="utf-8"))

    return app
