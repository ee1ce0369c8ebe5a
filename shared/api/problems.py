"""Errors as RFC 7807 problem details (`application/problem+json`), one handler for all of them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_BASE = "https://cityops.example/problems/"
PROBLEM_MEDIA = "application/problem+json"


class ApiError(Exception):
    """A domain error that carries its HTTP status, a short code and words that say what to do."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ):
        self.status, self.code, self.detail, self.headers, self.extra = (
            status,
            code,
            detail,
            headers or {},
            extra,
        )


def problem(
    request: Request, status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": PROBLEM_BASE + code,
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA, headers=headers)


PROBLEM_SCHEMA = {
    "description": "Problem details (RFC 7807)",
    "content": {
        PROBLEM_MEDIA: {
            "example": {
                "type": PROBLEM_BASE + "not_logged_in",
                "title": "not logged in",
                "status": 401,
                "detail": "log in first: POST /api/v1/token with username and password, then send "
                "'Authorization: Bearer <token>'",
                "instance": "/api/v1/air/latest",
            }
        }
    },
}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return problem(request, exc.status, exc.code, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(x) for x in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        where = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:3])
        return problem(
            request, 422, "invalid_request", f"fix these parameters and retry: {where}", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such resource {request.url.path!r}: see /docs for the endpoints"
        return problem(request, exc.status_code, code, detail)
