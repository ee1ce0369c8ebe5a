"""Field inspection tasks for a traced source: the text inspectors read, in Chinese and English."""

from __future__ import annotations

from dataclasses import dataclass

KIND_ZH = {"industrial": "工业源", "traffic": "交通源", "construction": "工地扬尘", "dust": "堆场扬尘", "other": "其他源"}
POLLUTANT_ZH = {"pm25": "PM2.5", "pm10": "PM10", "so2": "二氧化硫", "no2": "二氧化氮", "co": "一氧化碳", "o3": "臭氧"}
POLLUTANT_EN = {"pm25": "PM2.5", "pm10": "PM10", "so2": "SO2", "no2": "NO2", "co": "CO", "o3": "O3"}


@dataclass(frozen=True)
class InspectionTask:
    source_id: str
    title_zh: str
    title_en: str
    body_zh: str
    body_en: str
    lat: float
    lon: float
    priority: str  # high | normal


def inspection_task(*, source_id: str, kind: str, lat: float, lon: float, pollutant: str, station_id: str,
                    observed: float, threshold: float, contribution: float, confidence: float,
                    time_iso: str, wind_from_deg: float, wind_speed: float, rank: int = 1,
                    same_park: tuple[str, ...] = ()) -> InspectionTask:
    """Build the bilingual task text: where to go, why (evidence), how much this source adds.

    `same_park`: the other sources of the named one's cluster (stacks within 1 km, nearest first). Tracing
    names the park far more reliably than the stack in it (bench/results/air.md: seen from kilometres
    through wind-vane error, neighbouring stacks look alike), so the inspector is told to check them
    when the named stack is clean.
    """
    pz, pe = POLLUTANT_ZH.get(pollutant, pollutant), POLLUTANT_EN.get(pollutant, pollutant)
    kz = KIND_ZH.get(kind, kind)
    share = 100.0 * contribution / max(observed, 1e-9)
    priority = "high" if rank == 1 and confidence >= 0.5 else "normal"
    title_zh = f"现场核查：{kz} {source_id}（{pz}超标溯源）"
    title_en = f"Field inspection: {kind} source {source_id} ({pe} exceedance tracing)"
    body_zh = (
        f"{time_iso} 站点 {station_id} 的 {pz} 浓度 {observed:.0f} µg/m³，超过限值 {threshold:.0f} µg/m³。"
        f"风向 {wind_from_deg:.0f}°、风速 {wind_speed:.1f} m/s，溯源模型排名第 {rank}：{kz} {source_id}"
        f"（位置 {lat:.5f}, {lon:.5f}），估计贡献 {contribution:.0f} µg/m³（约 {share:.0f}%），置信度 {confidence:.0%}。"
        f"请前往现场核查排放情况并拍照取证。"
    )
    body_en = (
        f"At {time_iso}, {pe} at station {station_id} was {observed:.0f} µg/m³, above the limit of "
        f"{threshold:.0f} µg/m³. Wind from {wind_from_deg:.0f}° at {wind_speed:.1f} m/s. Source tracing ranks "
        f"{kind} source {source_id} (at {lat:.5f}, {lon:.5f}) number {rank}, estimated contribution "
        f"{contribution:.0f} µg/m³ (about {share:.0f}%), confidence {confidence:.0%}. "
        f"Please inspect the site's emissions and take photographs as evidence."
    )
    if same_park:
        names = "、".join(same_park)
        body_zh += (f"其 1 公里范围内（如同一园区）还有登记排放源 {names}：溯源对区域的判断比对单个排放口可靠，"
                    f"若 {source_id} 排放正常，请依次核查上述排放源。")
        body_en += (f" Other registered sources within 1 km of it (such as the same industrial park): "
                    f"{', '.join(same_park)}. Tracing names the area more reliably than the single stack; if "
                    f"{source_id} is clean, check these in that order.")
    return InspectionTask(source_id, title_zh, title_en, body_zh, body_en, lat, lon, priority)
