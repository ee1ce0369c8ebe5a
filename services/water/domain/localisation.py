"""Leak localisation: simulated leak signatures at candidate pipes, matched against observed residuals.

The sensitivity matrix holds, for every candidate pipe, how each sensor moves per m³/h of
leak at that pipe (pressure in m, flow in m³/h). It is computed with the EPANET engine that
ships with wntr — steady-state solves per junction at three times of day through the toolkit,
without files in between — and cached on disk under the network file's hash and the sensor
set, so a restart does not recompute it.
A pipe's signature is the mean of its two end junctions' signatures (a leak in mid-pipe).

Matching is a one-sided generalised likelihood-ratio test per pipe: with residuals `r` and
noise scales `sigma`, the best leak flow at pipe k is q = max(0, s·r / s·s) (weighted by
1/sigma²) and the score is the explained variance (s·r)² / s·s. Neighbouring pipes often score
alike, so the ranking is a decision rather than a sort: scores become a posterior over pipes
(a Gaussian likelihood whose variance is the noise plus a share of the signal), and the first candidate is the pipe with the most posterior within
300 m of pipe distance of it — where a crew with a listening stick would start — the next two the
ones covering most of what is left, then the best-fitting pipes (see :func:`localise`).
The monitor matches pressures only, weighted by their residual spread, uncentred (see :func:`localise`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.water.domain.network import WaterNetwork, run_epanet

# EPANET toolkit codes (epanet2.h)
_EN_DEMAND, _EN_PRESSURE, _EN_BASEDEMAND, _EN_PATTERN = 9, 11, 1, 2
_EN_FLOW = 8
_EN_PATTERNSTART = 4
_EN_TANKLEVEL, _EN_INITSTATUS = 8, 4

# Model error, as a share of the leak's signal: residuals are in noise units, so a pipe whose fit leaves
# Δ more squared residual is exp(-Δ / (2 + MODEL_ERROR · |r|²)) times as likely as the best — the noise's
# own likelihood for a small change, a share of it (0.03 less explained: e times less likely) for a large
# one, where demand, roughness and a steady-state signature against hours of tank drainage dominate.
# Set on the water benchmark's scenarios (0.02-0.05 alike there) and checked on fresh ones (bench/results/water-fresh.md).
MODEL_ERROR = 0.03
_MAX_POSTERIOR_PIPES = 400
# The first AREAS candidates are as many places to start (each covering most of the posterior the ones
# before it leave); the `top` best-fitting pipes follow, so every pipe a plain sort would list is still
# listed (when the places to start displaced three of the ten, the city demo's burst pipe, 8th-10th best,
# fell off the list at some hours of the day; covering with all ten put the true pipe in the list for 0.33).
AREAS = 3


@dataclass(frozen=True)
class Sensor:
    """A SCADA sensor placed on the network: `element` is a node (pressure, demand, level) or a link (flow)."""

    sensor_id: str
    kind: str  # pressure | flow | level | demand
    element: str


@dataclass
class SensitivityMatrix:
    sensors: list[Sensor]
    pipes: list[str]
    # (n_pipes, n_sensors): change of each sensor per m³/h of leak at the pipe
    per_m3h: np.ndarray
    network_hash: str

    def signature(self, pipe: str) -> np.ndarray:
        return self.per_m3h[self.pipes.index(pipe)]


@dataclass(frozen=True)
class LeakCandidate:
    pipe_id: str
    score: float  # share of the residual's weighted variance the leak at this pipe explains, 0..1
    flow_m3h: float
    distance_to_top_m: float
    # chance, under the match's posterior over pipes, that the leak lies within `within_m` of this pipe
    p_within: float = float("nan")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CITYOPS_CACHE_DIR", Path.home() / ".cache" / "cityops")) / "water"


def _sensor_key(sensors: list[Sensor]) -> str:
    blob = json.dumps([(s.sensor_id, s.kind, s.element) for s in sensors]).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def sensitivity_matrix(
    net: WaterNetwork,
    sensors: list[Sensor],
    *,
    cache_dir: Path | None = None,
    state: str = "initial",
) -> SensitivityMatrix:
    """Leak signatures of every pipe at the sensors, from the disk cache when present.

    `state`: "initial" solves each snapshot from the `.inp`'s initial tank levels and pump states;
    "operating" from those of a leak-free extended-period run at that hour (see _junction_signatures).
    """
    if state not in ("initial", "operating"):
        raise ValueError(f"signature state must be 'initial' or 'operating', not {state!r}")
    cache_dir = cache_dir or default_cache_dir()
    tag = "ss1" if state == "initial" else "op1"
    path = cache_dir / f"sens-{net.file_hash}-{_sensor_key(sensors)}-{tag}.npz"
    if path.exists():
        try:
            z = np.load(path, allow_pickle=False)
            return SensitivityMatrix(sensors, [str(p) for p in z["pipes"]], z["per_m3h"], net.file_hash)
        except (OSError, ValueError, KeyError):
            pass  # a half-written cache file: recompute and overwrite it
    node_sig = _junction_signatures(net, sensors, operating=state == "operating")
    pipes, rows = [], []
    for pipe in net.pipes:
        a, b = net.link_nodes[pipe]
        ends = [node_sig[n] for n in (a, b) if n in node_sig]
        if ends:
            pipes.append(pipe)
            rows.append(np.mean(ends, axis=0))
    mat = np.array(rows) if rows else np.zeros((0, len(sensors)))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, pipes=np.array(pipes), per_m3h=mat)
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache is slower, not wrong
    return SensitivityMatrix(sensors, pipes, mat, net.file_hash)


def _junction_signatures(net: WaterNetwork, sensors: list[Sensor], hours: tuple[float, ...] = (3.0, 11.0, 19.0),
                         operating: bool = False) -> dict[str, np.ndarray]:
    """Steady-state response of the sensors to a leak at each junction, averaged over `hours` of the day.

    Tank heads are held where they are, which is what the monitor's residuals mean: its
    expectations are conditioned on the measured tank levels, so the part of a leak's effect
    that goes through draining tanks is already in the expectation, not in the residual.
    A day-long extended-period signature was tried: on the benchmark it put 25 % of top
    candidates within 1 km (this one 20 %), none within 300 m either way, at 15 times the cost.

    With `operating`, each snapshot starts from the network's operating state at that hour — tank
    levels and pump and valve states of the second day of a leak-free extended-period run — instead
    of the `.inp`'s initial state: a tank that runs full (ky4's T-1 and T-2) is closed in operation,
    and treating it as an open fixed head hides the drop a leak causes over its whole zone. Noise-free,
    20 ky4 leaks seen 6 h after onset with the draining tanks' part removed: top-1 within 300 m 0.05
    from the initial state, 0.15 from the operating state; on the benchmark, whitened, about twice the
    initial state's share. The batch command uses it (detection.BATCH_OPTIONS); the live service
    keeps the initial state, with which the city demo's Net3 ranks better (bench/results/water.md).
    """
    import copy

    import wntr
    from wntr.epanet import toolkit

    state = _operating_state(net, hours) if operating else {}
    wn = copy.deepcopy(net.wn)
    wn.options.time.duration = 0
    wn.options.hydraulic.demand_model = "DDA"  # linear response; PDD is used where the data are simulated
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "net.inp")
        wntr.network.write_inpfile(wn, inp, units="CMH")  # pressures in m, flows in m³/h
        en = toolkit.ENepanet()
        en.ENopen(inp, os.path.join(tmp, "net.rpt"), "")
        try:
            en.ENopenH()
            kinds = []
            for s in sensors:
                if s.kind == "flow":
                    kinds.append(("link", en.ENgetlinkindex(s.element)))
                elif s.kind == "pressure":
                    kinds.append(("node", en.ENgetnodeindex(s.element)))
                else:
                    kinds.append(("none", 0))  # tank levels and meters do not move in a snapshot

            def read() -> np.ndarray:
                out = np.zeros(len(sensors))
                for i, (k, idx) in enumerate(kinds):
                    if k == "link":
                        out[i] = en.ENgetlinkvalue(idx, _EN_FLOW)
                    elif k == "node":
                        out[i] = en.ENgetnodevalue(idx, _EN_PRESSURE)
                return out

            junctions = net.junctions
            total_base = sum(float(wn.get_node(j).base_demand) for j in junctions) * 3600.0
            q0 = max(1.0, 0.02 * total_base)  # m³/h: small enough to stay near-linear
            acc = {j: np.zeros(len(sensors)) for j in junctions}
            for h in hours:
                levels, status = state.get(h, ({}, {}))
                for tank, level in levels.items():
                    en.ENsetnodevalue(en.ENgetnodeindex(tank), _EN_TANKLEVEL, level)
                for link, st in status.items():
                    en.ENsetlinkvalue(en.ENgetlinkindex(link), _EN_INITSTATUS, st)
                en.ENsettimeparam(_EN_PATTERNSTART, int(h * 3600))
                en.ENinitH(0)
                en.ENrunH()
                base = read()
                for j in junctions:
                    idx = en.ENgetnodeindex(j)
                    d0 = en.ENgetnodevalue(idx, _EN_BASEDEMAND)
                    pat = en.ENgetnodevalue(idx, _EN_PATTERN)
                    dem0 = en.ENgetnodevalue(idx, _EN_DEMAND)
                    # a leak is extra outflow on top of the customer demand at this hour
                    if d0 > 0 and dem0 > 0:
                        en.ENsetnodevalue(idx, _EN_BASEDEMAND, d0 + q0 * d0 / dem0)
                    else:
                        en.ENsetnodevalue(idx, _EN_PATTERN, 0)
                        en.ENsetnodevalue(idx, _EN_BASEDEMAND, q0)
                    en.ENinitH(0)
                    en.ENrunH()
                    added = en.ENgetnodevalue(idx, _EN_DEMAND) - dem0
                    if added > 1e-9:
                        acc[j] += (read() - base) / added
                    en.ENsetnodevalue(idx, _EN_BASEDEMAND, d0)
                    en.ENsetnodevalue(idx, _EN_PATTERN, pat)
            en.ENcloseH()
        finally:
            en.ENclose()
    return {j: v / len(hours) for j, v in acc.items()}


def _operating_state(net: WaterNetwork, hours: tuple[float, ...], days: int = 2) -> dict[float, tuple[dict, dict]]:
    """Tank levels (m) and pump/valve states (1 open, 0 closed) at `hours` of the last day of a leak-free
    extended-period run of the network as given; empty where the run fails (the snapshot then starts from
    the `.inp`'s initial state)."""
    import copy
    import logging

    wn = copy.deepcopy(net.wn)
    wn.options.time.duration = days * 86400
    wn.options.time.report_timestep = wn.options.time.hydraulic_timestep
    wn.options.quality.parameter = "NONE"
    logging.getLogger("wntr").setLevel(logging.ERROR)
    try:
        res = run_epanet(wn)
    except Exception as exc:  # noqa: BLE001 - wntr raises bare EpanetExceptions and RuntimeErrors alike
        logging.getLogger(__name__).warning(
            "leak signatures: the %d-day extended-period run of %s failed (%s); snapshots start from the "
            ".inp's initial tank levels and pump states instead", days, net.path.name, exc)
        return {}
    head = res.node["pressure"]
    status = res.link["status"]
    out = {}
    for h in hours:
        t = head.index[np.argmin(np.abs(head.index.to_numpy(dtype=float) - ((days - 1) * 24 + h) * 3600))]
        links = {p: 1.0 if float(status.at[t, p]) > 0 else 0.0 for p in wn.pump_name_list}
        # a valve that was closed stays closed; an active one (a PRV regulating) is left to the solver
        links |= {v: 0.0 for v in wn.valve_name_list if float(status.at[t, v]) == 0}
        out[h] = ({tk: float(head.at[t, tk]) for tk in wn.tank_name_list}, links)
    return out


def localise(
    matrix: SensitivityMatrix,
    residual: np.ndarray,
    sigma: np.ndarray,
    net: WaterNetwork | None = None,
    *,
    top: int = 10,
    centre: bool = False,
    within_m: float | None = 300.0,
    model_error: float = MODEL_ERROR,
) -> list[LeakCandidate]:
    """Rank pipes by how well a leak there explains `residual` (observed minus expected, per sensor).

    NaN residuals (sensors without data) are left out. With `centre`, the mean over the sensors is
    removed from the residual and from every signature first: over hours, a leak also drains the
    tanks and lowers every pressure alike, which a steady-state signature does not contain, so
    only the spatial shape is matched. Returns candidates best first: AREAS places to start, each in
    turn the pipe with the most posterior within `within_m` not covered by those before it, then the
    `top` best-fitting pipes not among them (up to `top` + AREAS in all); the `top` best-fitting pipes
    alone with `within_m` None or without a network to measure distance on. `residual` and `sigma` should
    put the residual in noise units: the posterior reads squared residuals as log-likelihoods.
    """
    r = np.asarray(residual, dtype=float)
    ok = np.isfinite(r) & np.isfinite(sigma) & (sigma > 0)
    if not ok.any() or matrix.per_m3h.shape[0] == 0:
        return []
    w = 1.0 / sigma[ok]
    rr = r[ok]
    S0 = matrix.per_m3h[:, ok]
    if centre and ok.sum() > 2:
        rr = rr - rr.mean()
        S0 = S0 - S0.mean(axis=1, keepdims=True)
    rw = rr * w
    S = S0 * w
    ss = np.einsum("ij,ij->i", S, S)
    sr = S @ rw
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(ss > 0, sr / ss, 0.0)
        score = np.where((ss > 0) & (sr > 0), sr * sr / ss, 0.0)
    total = float(rw @ rw) or 1.0
    order, p_within = _cover_order((score - score.max()) / (2.0 + model_error * total), matrix.pipes, net, top,
                                   within_m)
    top_pipe = matrix.pipes[order[0]]
    out = []
    for i, pw in zip(order, p_within, strict=True):
        pipe = matrix.pipes[i]
        dist = net.pipe_distance_m(top_pipe, pipe) if net is not None else float("nan")
        out.append(LeakCandidate(pipe, float(score[i] / total), float(max(q[i], 0.0)), dist, pw))
    return out


def _cover_order(loglik: np.ndarray, pipes: list[str], net: WaterNetwork | None, top: int,
                 within_m: float | None) -> tuple[list[int], list[float]]:
    """Greedy maximum coverage of the posterior over pipes (log-likelihoods `loglik`, flat prior, as
    the benchmark draws leaks) by balls of `within_m` pipe distance.

    Many neighbouring pipes explain a leak about equally well, and the best single match is often a
    stray pipe at the edge of that region; the pipe covering most of the posterior is nearer the leak
    on average. The first AREAS picks cover; the `top` best-fitting pipes follow (those not picked
    already), so the list holds every pipe it held before the decision, and up to AREAS more. Returns
    pipe indices and each one's posterior within `within_m`.
    """
    by_score = list(np.argsort(-loglik, kind="stable"))
    if net is None or within_m is None:
        return by_score[:top], [float("nan")] * min(top, len(by_score))
    post = np.exp(loglik - loglik.max())
    post /= post.sum()
    cand = [i for i in by_score[:_MAX_POSTERIOR_PIPES] if post[i] > 1e-6 * post.max()]
    d = net.pipe_distances_among([pipes[i] for i in cand], limit_m=within_m)
    near = d <= within_m
    mass = post[cand]
    left = mass.copy()
    order, p_within = [], []
    for _ in range(min(top, len(cand), AREAS)):
        cover = near @ left
        k = int(np.argmax(cover))
        if cover[k] <= 1e-12:
            break
        order.append(cand[k])
        p_within.append(float(near[k] @ mass))
        left = np.where(near[k], 0.0, left)
    at = {i: k for k, i in enumerate(cand)}
    for i in by_score[:top]:  # then the `top` pipes that fit best, those not named already
        if i not in order:
            order.append(i)
            # (a pipe outside the candidates: its own posterior, all but nothing, is what is known)
            p_within.append(float(near[at[i]] @ mass) if i in at else float(post[i]))
    return order, p_within
