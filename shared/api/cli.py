"""`cityops api serve`"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="query API for dashboards and other city systems")
    cmds = p.add_subparsers(dest="api_command", metavar="ACTION")
    cmds.required = True
    s = cmds.add_parser("serve", help="serve the API (OpenAPI at /docs and /openapi.json)")
    s.add_argument("--port", type=int, default=None, help="HTTP port (default CITYOPS_API_PORT or 8130)")
    s.add_argument("--host", default=None, help="bind address (default CITYOPS_API_HOST or 127.0.0.1)")
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from shared.api.app import build
    from shared.api.settings import ApiSettings
    from shared.service import serve

    try:
        s = ApiSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        missing = ", ".join("CITYOPS_" + str(e["loc"][0]).upper() for e in exc.errors())
        raise SystemExit(
            f"error: bad or missing settings {missing}: run `cityops stack up` first, or export them"
        ) from None
    from shared.notify.domain.config import ConfigError

    try:
        app = build(s)
    except ConfigError as exc:  # a roster or consumers file refused (e.g. the demo accounts): one line, what to do
        raise SystemExit(f"error: {exc}") from None
    return asyncio.run(serve("api", app, [], port=args.port or s.api_port, host=args.host or s.api_host))
