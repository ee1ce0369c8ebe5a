"""Logger placement (services/water/domain/placement.py) and `cityops water place-loggers`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.water.domain.hydraulics import choose_sensors, total_base_demand_m3h
from services.water.domain.network import load_network
from services.water.domain.placement import (
    _leak_signatures,
    matched_share,
    pipe_distance_matrix,
    place_loggers,
    simulated_leaks,
)

CITYOPS = Path(sys.executable).parent / "cityops"


def _lib(name: str) -> Path:
    import wntr

    return Path(wntr.__file__).parent / "library" / "networks" / name


@pytest.fixture(scope="module")
def net3():
    return load_network(_lib("Net3.inp"))


def test_pipe_distance_matrix_agrees_with_the_network(net3):
    pipes = net3.pipes[:25]
    d = pipe_distance_matrix(net3, pipes)
    for i in (0, 7, 19):
        for j in (3, 11, 24):
            assert d[i, j] == pytest.approx(net3.pipe_distance_m(pipes[i], pipes[j]), rel=1e-6)


def test_placed_loggers_tell_leaks_apart_better_than_spread_ones(net3, tmp_path):
    """On fresh noisy leaks (not those placement saw), the placed 12 loggers match more leaks within 300 m."""
    placed = place_loggers(net3, 12, cache_dir=tmp_path)
    spread = [s.element for s in choose_sensors(net3, 12, 0, seed=1000) if s.kind == "pressure"]
    assert len(placed) == len(set(placed)) == 12
    junctions, pipes, sig = _leak_signatures(net3)
    dist = pipe_distance_matrix(net3, pipes)
    jx = {j: i for i, j in enumerate(junctions)}
    got, base = [], []
    for seed in range(11, 16):
        truth, obs = simulated_leaks(sig, total_base_demand_m3h(net3), 0.02, seed)
        got.append(matched_share(sig, dist, [jx[j] for j in placed], truth, obs, 300.0))
        base.append(matched_share(sig, dist, [jx[j] for j in spread], truth, obs, 300.0))
    assert np.mean(got) > np.mean(base) + 0.03, (got, base)


def test_existing_loggers_are_kept_and_the_layout_is_cached(net3, tmp_path):
    keep = (net3.junctions[3], net3.junctions[50])
    first = place_loggers(net3, 6, existing=keep, cache_dir=tmp_path)
    assert first[:2] == list(keep) and len(first) == 6
    cached = list(tmp_path.glob(f"loggers-{net3.file_hash}-*.json"))
    assert len(cached) == 1
    cached[0].write_text('["' + '", "'.join(reversed(first)) + '"]')  # what is on disk is what comes back
    assert place_loggers(net3, 6, existing=keep, cache_dir=tmp_path) == list(reversed(first))


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CITYOPS_CACHE_DIR=str(cache))
    return subprocess.run([str(CITYOPS), "water", "place-loggers", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_place_loggers_command_writes_the_layout_and_a_map(tmp_path):
    out, png = tmp_path / "loggers.csv", tmp_path / "loggers.png"
    r = _run("--network", str(_lib("Net3.inp")), "--loggers", "8", "--existing", "10,20", "--out", str(out),
             "--map", str(png), cache=tmp_path)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(out, dtype={"node_id": str})
    assert list(got.columns) == ["rank", "node_id", "x", "y", "existing"]
    assert list(got["rank"]) == list(range(1, 9))
    assert list(got["node_id"][:2]) == ["10", "20"] and got["existing"].tolist() == [True, True] + [False] * 6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["broken_inp", "unknown_existing", "too_many", "too_few"])
def test_place_loggers_bad_input_exits_2_with_one_line(tmp_path, case):
    net, n, existing, expect = str(_lib("Net3.inp")), "5", "", ""
    if case == "broken_inp":
        net = str(tmp_path / "bad.inp")
        Path(net).write_text("[JUNCTIONS]\nJ1 10 abc\n[END]\n")
        expect = "bad.inp"
    elif case == "unknown_existing":
        existing, expect = "10,NOT-A-NODE", "NOT-A-NODE"
    elif case == "too_many":
        n, expect = "500", "92 junctions"
    elif case == "too_few":
        n, existing, expect = "1", "10,20", "2 existing loggers"
    r = _run("--network", net, "--loggers", n, "--existing", existing, "--out", str(tmp_path / "o.csv"), cache=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expect in lines[0]
    assert not (tmp_path / "o.csv").exists()


def test_pipe_distances_stop_at_the_limit(net3):
    pipes = net3.pipes[:40]
    d = net3.pipe_distances_among(pipes, limit_m=300.0)
    full = pipe_distance_matrix(net3, pipes)
    assert np.array_equal(np.isinf(d), full > 300.0)
    assert np.allclose(d[np.isfinite(d)], full[full <= 300.0])


def test_ranking_by_posterior_within_300m_beats_the_best_single_match(net3):
    """Neighbouring pipes explain a leak about equally well: the pipe with the most posterior within 300 m
    of it lands within 300 m of the true pipe more often than the pipe that fits best (exact noise model)."""
    from services.water.domain.localisation import SensitivityMatrix, Sensor, localise

    junctions, pipes, sig = _leak_signatures(net3)
    loggers = [s.element for s in choose_sensors(net3, 12, 0, seed=1000) if s.kind == "pressure"]
    jx = {j: i for i, j in enumerate(junctions)}
    cols = [jx[j] for j in loggers]
    m = SensitivityMatrix([Sensor(j, "pressure", j) for j in loggers], pipes, sig[:, cols], "test")
    dist = pipe_distance_matrix(net3, pipes)
    noise = 0.03
    best, cover = [], []
    for seed in range(11, 16):
        truth, obs = simulated_leaks(sig, total_base_demand_m3h(net3), noise, seed)
        for out, within in ((best, None), (cover, 300.0)):
            top = [localise(m, o[cols], np.full(len(cols), noise), net3, model_error=0.0, within_m=within, top=3)
                   for o in obs]
            out.append(np.mean([dist[t, pipes.index(c[0].pipe_id)] <= 300.0 for t, c in zip(truth, top, strict=True)]))
            if within:
                p = [c[0].p_within for c in top]
                assert all(0.0 < x <= 1.0 + 1e-9 for x in p)
    assert all(c >= b for b, c in zip(best, cover, strict=True)), (best, cover)
    assert np.mean(cover) >= np.mean(best) + 0.04, (best, cover)
