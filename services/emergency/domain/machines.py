"""Synthetic pump channels for tests and the city simulator.

A pump's channels follow two hidden drivers — the load the network asks for and the
supply voltage — plus sensor noise and a slowly wandering motor temperature, so the
channels are correlated the way a real pump's are. A developing fault (bearing wear)
ramps vibration and bearing temperature up and costs some flow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# channel -> (unit, valid_min, valid_max)
PUMP_CHANNELS: dict[str, tuple[str, float, float]] = {
    "flow_m3h": ("m3/h", 0.0, 3000.0),
    "discharge_pressure_bar": ("bar", 0.0, 25.0),
    "motor_current_a": ("A", 0.0, 400.0),
    "supply_voltage_v": ("V", 0.0, 500.0),
    "vibration_rms_mms": ("mm/s", 0.0, 50.0),
    "bearing_temp_c": ("degC", -20.0, 150.0),
    "motor_temp_c": ("degC", -20.0, 150.0),
}


def pump_series(
    n: int,
    rng: np.random.Generator,
    *,
    rated_flow_m3h: float = 800.0,
    fault_start: int | None = None,
    fault_ramp: int = 240,
    fault_severity: float = 1.0,
    daily_amplitude: float = 0.15,
    wander: float = 0.02,
    ambient_drift: float = 0.03,
    cycle_min: float = 1440.0,
) -> pd.DataFrame:
    """`n` samples (one a minute) of one pump's channels; a bearing fault from `fault_start` on.

    The fault grows linearly over `fault_ramp` samples to full severity: vibration
    +4 mm/s, bearing temperature +12 °C, flow -6 %, current +4 %.
    """
    t = np.arange(n)
    # demand: a cycle (a day by default) plus slow AR(1) wander
    ar = np.zeros(n)
    e = rng.normal(0, wander, n)
    for i in range(1, n):
        ar[i] = 0.98 * ar[i - 1] + e[i]
    load = np.clip(0.75 + daily_amplitude * np.sin(2 * np.pi * (t / cycle_min - 0.3)) + ar, 0.3, 1.1)
    volt = 400.0 + rng.normal(0, 3.0, n)
    flow = rated_flow_m3h * load * (1 + rng.normal(0, 0.01, n))
    pressure = 6.0 - 2.0 * (load - 0.75) ** 2 + 0.8 * (load - 0.75) + rng.normal(0, 0.05, n)
    current = 120.0 * load * (400.0 / volt) + rng.normal(0, 1.5, n)
    vibration = 2.0 + 0.8 * load + rng.normal(0, 0.12, n)
    ambient = 25.0 + np.cumsum(rng.normal(0, ambient_drift, n))
    motor_temp = ambient + 30.0 * load + rng.normal(0, 0.2, n)
    bearing_temp = ambient + 15.0 + 10.0 * load + rng.normal(0, 0.3, n)
    if fault_start is not None and fault_start < n:
        g = np.clip((t - fault_start) / max(fault_ramp, 1), 0.0, 1.0) * fault_severity
        vibration = vibration + 4.0 * g
        bearing_temp = bearing_temp + 12.0 * g
        flow = flow * (1 - 0.06 * g)
        current = current * (1 + 0.04 * g)
    return pd.DataFrame({
        "flow_m3h": flow,
        "discharge_pressure_bar": pressure,
        "motor_current_a": current,
        "supply_voltage_v": volt,
        "vibration_rms_mms": vibration,
        "bearing_temp_c": bearing_temp,
        "motor_temp_c": motor_temp,
    })
