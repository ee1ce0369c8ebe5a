"""Batch command 6 of CONTRACTS.md: `cityops water detect` — a thin driver over services.water.domain."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from shared.batch_io import BadInput, parse_time_arg, progress, read_table, write_table

OUT_COLUMNS = ["leak_id", "detected_at", "pipe_id", "candidates", "estimated_flow_m3h"]
_NODE_KINDS = {"pressure", "demand", "level"}


def detect(network_path: str, scada_path: str, train_until: str, out_path: str) -> None:
    """Read the network and SCADA, detect leaks after `train_until`, write one row per leak."""
    from services.water.domain.detection import (
        BATCH_OPTIONS,
        KINDS,
        align_to_grid,
        detect_leaks,
        min_training_steps,
    )
    from services.water.domain.network import NetworkError, load_network

    t_train = parse_time_arg(train_until)
    if Path(out_path).is_dir():
        raise BadInput(out_path, "is a folder; give --out a file path, e.g. out.csv inside it")
    scada = read_table(scada_path, required=["time", "sensor_id", "kind", "value"], times=["time"],
                       numeric=["value"], strings=["sensor_id", "kind"])
    try:
        net = load_network(network_path)
    except NetworkError as exc:
        raise BadInput(network_path, str(exc)) from None
    _check_sensors(scada, scada_path, net, KINDS)
    scada = scada.dropna(subset=["value"])
    if scada.empty:
        raise BadInput(scada_path, "no values (every value cell is empty)", column="value")
    # on the step's grid as the model sees it: readings stamped a few seconds off their step are that step's
    scada, step = align_to_grid(scada)
    train = scada.loc[scada["time"] <= t_train, "time"]
    need = max(48, min_training_steps(step))
    if train.nunique() < need:
        raise BadInput(scada_path, f"need at least {need} time steps at or before --train-until {t_train.isoformat()} "
                       f"to learn normal operation (found {train.nunique()} steps of {step / pd.Timedelta(minutes=1):g} "
                       f"min in {len(train)} rows); move --train-until later", column="time")
    try:
        leaks = detect_leaks(net, scada, t_train, **BATCH_OPTIONS)
    except ValueError as exc:
        raise BadInput(scada_path, str(exc)) from None
    # one line, after the fact: a bad input found while learning stays the only line on stderr
    print(f"water detect: {len(scada)} readings, {scada['sensor_id'].nunique()} sensors every "
          f"{step / pd.Timedelta(minutes=1):g} min, network {net.path.name} ({len(net.junctions)} junctions, "
          f"{len(net.pipes)} pipes): {len(leaks)} leak(s) after {t_train.isoformat()}", file=sys.stderr)
    rows = [{
        "leak_id": ev.leak_id,
        "detected_at": ev.detected_at,
        "pipe_id": ev.pipe_id,
        "candidates": ";".join(c.pipe_id for c in ev.candidates[:10]),
        "estimated_flow_m3h": round(float(ev.flow_m3h), 3) if pd.notna(ev.flow_m3h) else None,
    } for ev in leaks]
    out = pd.DataFrame(rows, columns=OUT_COLUMNS)
    out["detected_at"] = pd.to_datetime(out["detected_at"], utc=True)
    write_table(out, out_path, OUT_COLUMNS)


def place_loggers(network_path: str, n: int, out_path: str, *, existing: str = "", map_path: str | None = None) -> None:
    """`cityops water place-loggers`: junctions for `n` pressure loggers (domain.placement), as a CSV and a map."""
    from services.water.domain.mapping import network_map_png
    from services.water.domain.network import NetworkError, load_network
    from services.water.domain.placement import place_loggers as place

    try:
        net = load_network(network_path)
    except NetworkError as exc:
        raise BadInput(network_path, str(exc)) from None
    have = tuple(e.strip() for e in existing.split(",") if e.strip())
    if n < 1:
        raise BadInput("--loggers", f"need at least one logger, got {n}")
    if len(have) > n:
        raise BadInput("--existing", f"{len(have)} existing loggers but --loggers {n}: ask for at least as many")
    if n > len(net.junctions):
        raise BadInput("--loggers", f"{net.path.name} has {len(net.junctions)} junctions, fewer than {n} loggers")
    unknown = [e for e in have if e not in set(net.junctions)]
    if unknown:
        raise BadInput("--existing", f"not junctions of {net.path.name}: {', '.join(unknown[:5])} "
                       "(loggers go at junctions, by their .inp names)")
    print(f"water place-loggers: {n} loggers on {net.path.name} ({len(net.junctions)} junctions, "
          f"{len(net.pipes)} pipes), {len(have)} kept", file=sys.stderr)
    nodes = place(net, n, existing=have, progress=progress)
    out = pd.DataFrame({"rank": range(1, len(nodes) + 1), "node_id": nodes,
                        "x": [net.node_xy[j][0] for j in nodes], "y": [net.node_xy[j][1] for j in nodes],
                        "existing": [j in have for j in nodes]})
    write_table(out, out_path, ["rank", "node_id", "x", "y", "existing"])
    if map_path:
        network_map_png(net, [], map_path, sensor_nodes=nodes,
                        title=f"{net.path.name}: {n} pressure loggers placed to locate leaks")
    print(f"water place-loggers: wrote {out_path}" + (f" and {map_path}" if map_path else ""), file=sys.stderr)


def _check_sensors(scada: pd.DataFrame, path: str, net, kinds) -> None:
    """Every row's kind is known and its sensor sits on the network (a node, a link or a tank)."""
    bad_kind = ~scada["kind"].isin(kinds)
    if bad_kind.any():
        i = int(bad_kind.to_numpy().nonzero()[0][0])
        raise BadInput(path, f"unknown kind {scada['kind'].iloc[i]!r} (expected one of {', '.join(kinds)})",
                       row=i + 2, column="kind")
    for kind, sid in scada[["kind", "sensor_id"]].drop_duplicates().itertuples(index=False):
        if kind == "flow":
            ok, what = net.has_link(sid), "a link"
        elif kind == "level":
            ok, what = sid in set(net.tanks), "a tank"
        else:
            ok, what = net.has_node(sid), "a node"
        if not ok:
            mask = (scada["sensor_id"] == sid) & (scada["kind"] == kind)
            i = int(mask.to_numpy().nonzero()[0][0])
            raise BadInput(path, f"sensor {sid!r} ({kind}) is not {what} of network {net.path.name}",
                           row=i + 2, column="sensor_id")
