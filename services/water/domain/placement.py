"""Where to put pressure loggers so that a leak can be told from the pipes around it.

A utility buying its first 30 loggers wants them where they separate leaks best, not just spread
evenly. :func:`place_loggers` chooses junctions greedily: it simulates a leak at every pipe (its
operating-state signature at every junction, localisation._junction_signatures, times a leak flow
drawn log-uniform between 3 % and 15 % of the network's mean demand, plus logger noise of
`noise_m`), and adds, one at a time, the junction that most raises the share of those leaks whose
best-matching pipe (localisation.localise's score over the loggers chosen so far) lies within
`within_m` of pipe distance of the true one. Loggers already in place (`existing`) are kept.

In this leak model (0.02 m noise, 30 loggers on ky4, 964 nodes; a one-off check on fresh noise draws,
2026-11-29) 0.35 of leaks matched within 300 m against 0.28 for the same number of loggers spread by
farthest-point sampling (hydraulics.choose_sensors). On the benchmark's simulated weeks (bench/results/water.md, 32 detected leaks,
same scenarios, only the loggers moved) the batch command's first candidate was within 300 m for 0.47 of
leaks (spread: 0.41), a top-3 candidate for 0.72 (0.53), within 1 km for 0.81 (0.75); median distance
523 m (507 m). The layout is chosen for the best single match (the benchmark's figures before the
posterior decision of localisation.localise: 0.28 against 0.25); it is not re-chosen for that decision:
choosing each logger for that decision instead (among the 20-25 junctions best for the single match, in the
same simulated leaks) raised it in this leak model (ky4 0.33 -> 0.35, Net3 0.60 -> 0.65 on fresh noise) but
lowered it on the benchmark's weeks (seeds 0-29, 77 detected leaks: top-1 within 300 m 0.34 against 0.39,
top-3 0.49 against 0.64; a one-off check on 2026-11-29, script not kept): this leak model has noise but no
model error, and the two decisions part ways there.
Chama (Sandia) places sensors for detection coverage and time, not for
telling pipes apart, so this objective is our own.

The result is cached beside the sensitivity matrices, under the network file's hash and the options.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from services.water.domain.localisation import Sensor, _junction_signatures, default_cache_dir
from services.water.domain.network import WaterNetwork


def pipe_distance_matrix(net: WaterNetwork, pipes: list[str]) -> np.ndarray:
    """All-pairs pipe distance between link midpoints (as WaterNetwork.pipe_distance_m), in metres."""
    return net.pipe_distances_among(pipes)


def _leak_signatures(net: WaterNetwork) -> tuple[list[str], list[str], np.ndarray]:
    """Junctions, pipes and each pipe's pressure signature at every junction (m per m³/h), operating state."""
    junctions = net.junctions
    sig = _junction_signatures(net, [Sensor(j, "pressure", j) for j in junctions], operating=True)
    pipes, rows = [], []
    for pipe in net.pipes:
        ends = [sig[n] for n in net.link_nodes[pipe] if n in sig]
        if ends:
            pipes.append(pipe)
            rows.append(np.mean(ends, axis=0))
    return junctions, pipes, np.array(rows)


def matched_share(sig: np.ndarray, dist: np.ndarray, cols: list[int], truth: np.ndarray, obs: np.ndarray,
                  within_m: float) -> float:
    """Share of simulated leaks (`truth` pipe rows, observations `obs` at every junction) whose best match over
    the junction columns `cols` is within `within_m` of the true pipe."""
    s = sig[:, cols]
    return _share(obs[:, cols] @ s.T, np.einsum("ij,ij->i", s, s), dist, truth, within_m)


def _share(a: np.ndarray, b: np.ndarray, dist: np.ndarray, truth: np.ndarray, within_m: float) -> float:
    """From the dot products `a` (leaks × pipes) and signature norms `b`, the share of leaks matched within `within_m`
    (the score of localisation.localise: explained variance, leaks that raise pressure excluded)."""
    score = np.where(a > 0, a * a / np.maximum(b, 1e-30), 0.0)
    return float((dist[truth, score.argmax(axis=1)] <= within_m).mean())


def simulated_leaks(sig: np.ndarray, mean_demand_m3h: float, noise_m: float, seed: int,
                    max_leaks: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """One leak per pipe (at most `max_leaks` pipes, drawn at random): its pipe row and what every junction reads."""
    rng = np.random.default_rng(seed)
    n = sig.shape[0]
    truth = np.sort(rng.choice(n, size=min(n, max_leaks), replace=False))
    q = np.exp(rng.uniform(np.log(0.03), np.log(0.15), len(truth))) * mean_demand_m3h
    obs = q[:, None] * sig[truth] + rng.standard_normal((len(truth), sig.shape[1])) * noise_m
    return truth, obs


def place_loggers(net: WaterNetwork, n: int, *, existing: tuple[str, ...] = (), noise_m: float = 0.02,
                  within_m: float = 300.0, seed: int = 0, cache_dir: Path | None = None,
                  progress=None) -> list[str]:
    """`n` junctions for pressure loggers (the `existing` ones first), chosen greedily to localise leaks.

    `progress`, when given, wraps the range of greedy steps (e.g. shared.batch_io.progress).
    """
    from services.water.domain.hydraulics import total_base_demand_m3h

    known = set(net.junctions)
    unknown = [e for e in existing if e not in known]
    if unknown:
        raise ValueError(f"existing loggers not at junctions of {net.path.name}: {', '.join(unknown[:5])}")
    if n > len(net.junctions):
        raise ValueError(f"{net.path.name} has {len(net.junctions)} junctions, fewer than the {n} loggers asked for")
    key = hashlib.sha256(json.dumps([n, sorted(existing), noise_m, within_m, seed]).encode()).hexdigest()[:12]
    path = (cache_dir or default_cache_dir()) / f"loggers-{net.file_hash}-{key}.json"
    if path.exists():
        try:
            return list(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # a half-written file: place again
    junctions, pipes, sig = _leak_signatures(net)
    dist = pipe_distance_matrix(net, pipes)
    truth, obs = simulated_leaks(sig, total_base_demand_m3h(net), noise_m, seed)
    jx = {j: i for i, j in enumerate(junctions)}
    chosen = [jx[e] for e in existing]
    # running numerators (observation . signature) and signature norms over the chosen loggers
    a = obs[:, chosen] @ sig[:, chosen].T if chosen else np.zeros((len(truth), len(pipes)))
    b = (sig[:, chosen] ** 2).sum(axis=1) if chosen else np.zeros(len(pipes))
    steps = range(len(chosen), n)
    for _ in (progress(steps, desc="placing loggers") if progress else steps):
        best, best_j = -1.0, -1
        taken = set(chosen)
        for j in range(len(junctions)):
            if j in taken:
                continue
            share = _share(a + np.outer(obs[:, j], sig[:, j]), b + sig[:, j] ** 2, dist, truth, within_m)
            if share > best:
                best, best_j = share, j
        chosen.append(best_j)
        a += np.outer(obs[:, best_j], sig[:, best_j])
        b += sig[:, best_j] ** 2
    out = [junctions[j] for j in chosen]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache places again next time
    return out
