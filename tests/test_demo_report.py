"""The demo report opens in headless Chromium with every image loaded, on a database the simulated city
filled through the real ingest code; missing products become "no data" notes, never a crash.
It is also checked on the real `cityops demo` run that tests/test_demo_e2e.py makes (`demo_db`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.browser]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def open_report(path):
    """(images as [{src, naturalWidth, complete}], page text) as Chromium sees the page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.resolve().as_uri(), wait_until="load", timeout=60_000)
            imgs = page.eval_on_selector_all(
                "img",
                "els => els.map(e => ({src: e.getAttribute('src'), w: e.naturalWidth, ok: e.complete}))",
            )
            text = page.inner_text("body")
            assert not errors, errors
            return imgs, text
        finally:
            browser.close()


@pytest.fixture(scope="module")
def filled(db_url):
    from shared.dashboards import fill

    sim = fill.simulate(8.0, 11)
    counts = fill.fill(db_url, sim)
    counts.update(fill.fill_air_products(db_url, sim))
    return sim, counts


def test_report_renders_with_every_image_loaded(db_url, filled, tmp_path):
    from shared.demo import report

    sim, counts = filled
    summary = {
        "published_total": counts["observations"],
        "rows_stored": counts["observations"],
        "dead_lettered": counts["dead_letters"],
        "latency": {},
        "scenarios": [],
        "alerts": 0,
    }
    path = report.write(summary, sim, SimpleNamespace(db_url=db_url), tmp_path)
    imgs, text = open_report(path)
    srcs = {i["src"] for i in imgs}
    # figures drawn from what the simulator alone fills: the stations at the peak, observed temperature,
    # the network with its pressure sensors and the injected leaks
    assert {
        "report_files/pollution_peak.png",
        "report_files/nowcast.png",
        "report_files/leak_map.png",
    } <= srcs
    assert imgs and all(i["ok"] and i["w"] > 0 for i in imgs), imgs
    # what the services have not written yet is said plainly, in both languages
    assert "no data for alert and delivery timeline" in text and "暂无数据" in text
    assert "no data for per-stage latency" in text
    # the grid and source tracing the air domain computed on the fill are drawn, not excused
    assert "air_grid is empty" not in text and "source_attributions is empty" not in text


def test_report_survives_an_empty_database(db_url, tmp_path):
    """No sensors, no observations: every section is a note, the page still opens."""
    import psycopg

    from shared.demo import report

    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS empty_probe")
    empty_url = db_url + ("&" if "?" in db_url else "?") + "options=-csearch_path%3Dempty_probe"
    with psycopg.connect(empty_url) as conn:
        from shared.storage.migrate import split_statements

        for f in ("0001_core.sql", "0002_products.sql", "0003_timeseries.plain.sql"):
            for stmt in split_statements(
                (report.Path(__file__).parents[1] / "shared/storage/migrations" / f).read_text()
            ):
                if "restricted" not in stmt:
                    conn.execute(stmt)
    path = report.write({"latency": {}}, None, SimpleNamespace(db_url=empty_url), tmp_path)
    imgs, text = open_report(path)
    assert all(i["ok"] and i["w"] > 0 for i in imgs)
    assert text.count("暂无数据") >= 3


def test_report_of_the_real_demo_has_every_plot(demo_db):
    """The same real demo run as tests/test_demo_e2e.py (one session fixture): its report opens in Chromium."""
    path = demo_db["out_dir"] / "report.html"
    assert path.exists(), f"cityops demo wrote no report; see {demo_db['out_dir'] / 'demo-stdout.log'}"
    imgs, text = open_report(path)
    assert len(imgs) == 5 and all(i["ok"] and i["w"] > 0 for i in imgs), (imgs, text[:2000])
