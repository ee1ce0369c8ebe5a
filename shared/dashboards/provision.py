"""Put the dashboards into Grafana: over its HTTP API (grafana-client), or as provisioning files.

`push()` is idempotent: the folder, the data source and each dashboard are addressed by a fixed
uid, created when missing and overwritten otherwise. A wrong URL or token ends in a
`ProvisionError` that says what to check, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from shared.dashboards import build
from shared.settings import PROJECT_ROOT

PROVISIONING = PROJECT_ROOT / "provisioning"


class ProvisionError(RuntimeError):
    pass


def _api(url: str, token: str, timeout: float):
    from grafana_client import GrafanaApi

    return GrafanaApi.from_url(url=url, credential=token, timeout=timeout)


def _call(url: str, fn, *args, **kwargs):
    """Run one grafana-client call and turn transport and auth failures into clear errors."""
    import niquests
    from grafana_client.client import GrafanaClientError, GrafanaServerError, GrafanaUnauthorizedError

    try:
        return fn(*args, **kwargs)
    except GrafanaUnauthorizedError as exc:
        raise ProvisionError(
            f"Grafana at {url} refused the token (HTTP 401): create a service-account token with the Editor "
            "role (Administration > Service accounts) and pass it with --token"
        ) from exc
    except GrafanaClientError as exc:
        if getattr(exc, "status_code", None) == 403:
            raise ProvisionError(
                f"Grafana at {url} says the token may not do this (HTTP 403): give its service "
                "account the Editor or Admin role"
            ) from exc
        raise
    except GrafanaServerError as exc:
        raise ProvisionError(
            f"Grafana at {url} failed with a server error ({exc}): check the Grafana log"
        ) from exc
    except (niquests.exceptions.ConnectionError, niquests.exceptions.Timeout) as exc:
        raise ProvisionError(
            f"cannot reach Grafana at {url} ({type(exc).__name__}): check the URL and port "
            "(e.g. http://grafana:3000) and that Grafana is running"
        ) from exc


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None)


def push(url: str, token: str, *, datasource: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Create or update the folder, the data source and every dashboard. Returns what was done."""
    from grafana_client.client import GrafanaClientError

    url = url.rstrip("/")
    api = _api(url, token, timeout)
    done: dict[str, Any] = {"folder": None, "datasource": None, "dashboards": []}
    try:
        _call(url, api.folder.get_folder, build.FOLDER_UID)
        _call(url, api.folder.update_folder, build.FOLDER_UID, title=build.FOLDER_TITLE, overwrite=True)
        done["folder"] = "updated"
    except GrafanaClientError as exc:
        if _status(exc) != 404:
            raise ProvisionError(f"Grafana at {url} answered {exc} for the folder") from exc
        _call(url, api.folder.create_folder, build.FOLDER_TITLE, uid=build.FOLDER_UID)
        done["folder"] = "created"
    try:
        _call(url, api.datasource.get_datasource_by_uid, build.DATASOURCE_UID)
        _call(url, api.datasource.update_datasource_by_uid, build.DATASOURCE_UID, datasource)
        done["datasource"] = "updated"
    except GrafanaClientError as exc:
        if _status(exc) != 404:
            raise ProvisionError(f"Grafana at {url} answered {exc} for the data source") from exc
        _call(url, api.datasource.create_datasource, datasource)
        done["datasource"] = "created"
    for dash in build.all_dashboards():
        body = {
            "dashboard": {**dash, "id": None},
            "folderUid": build.FOLDER_UID,
            "overwrite": True,
            "message": "cityops grafana provision",
        }
        res = _call(url, api.dashboard.update_dashboard, body)
        done["dashboards"].append({"uid": dash["uid"], "status": (res or {}).get("status", "success")})
    return done


def provisioning_files(*, datasource: dict[str, Any] | None = None) -> dict[str, str]:
    """Relative path under provisioning/ -> file text, for Grafana's file provisioning."""
    ds = dict(datasource or build.datasource(password=None))
    ds.pop("uid", None)
    ds_file = {
        "apiVersion": 1,
        "datasources": [
            {
                **ds,
                "uid": build.DATASOURCE_UID,
                "editable": False,
                # the password comes from the environment of the Grafana container, never from the repo
                "secureJsonData": {"password": "$CITYOPS_GRAFANA_DB_PASSWORD"},
            }
        ],
    }
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "cityops",
                "orgId": 1,
                "folder": build.FOLDER_TITLE,
                "folderUid": build.FOLDER_UID,
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {
                    "path": "/etc/grafana/provisioning/dashboards/json",
                    "foldersFromFilesStructure": False,
                },
            }
        ],
    }
    out = {
        "datasources/cityops.yaml": yaml.safe_dump(ds_file, sort_keys=False, allow_unicode=True),
        "dashboards/cityops.yaml": yaml.safe_dump(provider, sort_keys=False, allow_unicode=True),
    }
    for dash in build.all_dashboards():
        out[f"dashboards/json/{dash['uid']}.json"] = json.dumps(dash, indent=2, ensure_ascii=False) + "\n"
    return out


def write_files(root: Path = PROVISIONING) -> list[Path]:
    written = []
    for rel, text in provisioning_files().items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        written.append(p)
    return written


def drift(root: Path = PROVISIONING) -> list[str]:
    """Files under provisioning/ that differ from what the code generates (empty when in step)."""
    want = provisioning_files()
    out = [
        rel
        for rel, text in want.items()
        if not (root / rel).exists() or (root / rel).read_text(encoding="utf-8") != text
    ]
    extra = {str(p.relative_to(root)) for p in (root / "dashboards" / "json").glob("*.json")} - set(want)
    return sorted(out + list(extra))
