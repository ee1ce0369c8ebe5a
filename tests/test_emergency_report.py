"""The incident report as a PDF document: bilingual text really in the file (extractable), the CJK font
embedded and the map drawn in, rendered from the same template as the HTML page."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pandas as pd
from shapely.geometry import box

from services.emergency.domain.incidents import GasRelease, Wind, advance, gas_evacuation_incident
from services.emergency.domain.report import render_pdf, render_report
from services.emergency.domain.zones import Zone
from shared.city import default_city

CITY = default_city()
T0 = pd.Timestamp("2026-05-01T02:00:00Z")
LAT, LON = 30.25, 120.15
PIT = Zone("hz-pit", "hazard", box(LON - 0.001, LAT - 0.001, LON + 0.001, LAT + 0.001), "泵坑", "Pump pit")


def _streams(pdf: bytes) -> list[bytes]:
    """Every stream of the file, inflated where it is Flate-compressed (object streams hold the dictionaries)."""
    out = []
    for m in re.finditer(rb"stream\r?\n", pdf):
        end = pdf.find(b"endstream", m.end())
        raw = pdf[m.end():end]
        try:
            out.append(zlib.decompressobj().decompress(raw))
        except zlib.error:
            out.append(raw)
    return out


def _unicode_in_cmaps(streams: list[bytes]) -> set[str]:
    """The characters the fonts' ToUnicode maps give back: what a reader copies or searches."""
    chars: set[str] = set()
    for s in streams:
        if b"begincmap" not in s:
            continue
        for hexes in re.findall(rb"<[0-9A-Fa-f]+>\s*<([0-9A-Fa-f]{4,})>", s):
            h = hexes.decode()
            chars.update(chr(int(h[i:i + 4], 16)) for i in range(0, len(h), 4))
    return chars


def _incident():
    rel = GasRelease(T0, "PS-3-wetwell", LAT, LON, "H2S", 400.0, 42.0)
    inc, _ = gas_evacuation_incident(rel, Wind(T0, 200.0, 3.0), CITY)
    for i, s in enumerate(["dispatched", "acknowledged", "on_site", "resolved", "reported"], start=1):
        inc = advance(inc, s, T0 + pd.Timedelta(minutes=5 * i), "调度员 dispatcher", f"步骤 step {i}")
    return inc


def test_pdf_report_is_bilingual_with_embedded_cjk_font_and_the_map() -> None:
    inc = _incident()
    html = render_report(inc, CITY, "2026-05-01T03:00:00Z", zones=[PIT])
    pdf = render_pdf(html)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    streams = _streams(pdf)
    dicts = b"\n".join([pdf, *streams])
    assert len(re.findall(rb"/Type\s*/Page\b", dicts)) >= 1
    assert re.search(rb"/FontFile[23]?\b", dicts), "fonts are embedded"
    assert re.search(rb"/BaseFont\s*/[A-Z]{6}\+Noto-?Sans-?CJK", dicts), "the CJK font is embedded (subset)"
    assert re.search(rb"/Subtype\s*/Image", dicts), "the map is in the document"
    chars = _unicode_in_cmaps(streams)
    for text in ("事件报告", "处置时间线", "证据", "地图", "已上报", "Incident report", "Timeline", "Evidence"):
        assert set(text) <= chars, f"{text!r} cannot be read back from the PDF"
    assert set(inc.title_zh) <= chars


def test_pdf_differs_when_the_incident_does() -> None:
    inc = _incident()
    a = render_pdf(render_report(inc, CITY, "2026-05-01T03:00:00Z", zones=[PIT]))
    b = render_pdf(render_report(inc, CITY, "2026-05-01T03:00:00Z", zones=[PIT], points=[
        {"lat": LAT, "lon": LON, "marker": "X", "color": "#c00"}]))
    # a real rendering of its input, not a fixed file
    assert a != b


def _service(tmp_path):
    from services.emergency.handlers import EmergencyService
    from services.emergency.settings import EmergencySettings

    s = EmergencySettings(db_url="postgresql://unused/none", state_dir=tmp_path,
                          emergency_pseudonym_key="report-test-key-0123456789abcdef")
    return EmergencyService(s, None, config={})


def test_service_files_pdf_and_html_and_names_the_pdf(tmp_path) -> None:
    svc = _service(tmp_path)
    tr = svc._open(_incident(), "alert-1", public=(LAT, LON))
    svc.render(tr)
    assert tr.report_path.endswith(".pdf")
    pdf = (tmp_path / "emergency" / "reports" / f"{tr.incident.incident_id}.pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and set("事件报告") <= _unicode_in_cmaps(_streams(pdf))
    assert "事件报告" in (tmp_path / "emergency" / "reports" / f"{tr.incident.incident_id}.html").read_text("utf-8")
    assert svc.message(tr, with_report=True).report_path == tr.report_path


def test_without_pdf_support_the_html_report_is_still_filed_and_named(tmp_path, monkeypatch, caplog) -> None:
    from services.emergency.domain import report

    monkeypatch.setattr(report, "pdf_unavailable", lambda: "OSError: cannot load library 'libpango-1.0-0'")
    svc = _service(tmp_path)
    tr = svc._open(_incident(), "alert-1", public=(LAT, LON))
    with caplog.at_level("ERROR", logger="cityops.emergency"):
        svc.render(tr)
        svc.render(tr)
    assert tr.report_path.endswith(".html") and "事件报告" in Path(tr.report_path).read_text("utf-8")
    assert not list((tmp_path / "emergency" / "reports").glob("*.pdf"))
    assert sum("HTML only" in r.getMessage() for r in caplog.records) == 1
