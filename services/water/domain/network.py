"""The distribution network: an EPANET `.inp` file loaded with wntr, plus the topology the models need.

- district metered areas (DMAs): from the city config when given, else a compact partition of
  the junctions by position (k-means on coordinates), so every model has a DMA to report;
- pipe lengths and shortest pipe distance (metres along pipes) between nodes and between pipes;
- a content hash of the file, the key under which simulated leak signatures are cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np


class NetworkError(ValueError):
    """The `.inp` file cannot be used (unreadable, or an EPANET/wntr parse error)."""


_EPANET_CWD = threading.Lock()


def run_epanet(wn):
    """Extended-period run of the wntr model `wn` with EPANET; every file it writes goes to a temporary directory.

    EPANET creates its scratch hydraulics file in the working directory (`en` and 6 random characters,
    64 MB for five weeks of ky4), whatever wntr's `file_prefix` says: from a read-only working directory
    (a container with a read-only root file system) the run fails with EPANET error 305, and a killed
    run leaves the file behind. So the run changes into the temporary directory and back. The working
    directory is the process's, hence the lock; CityOps' own paths are absolute (settings resolve the
    state directory) and command-line paths are used before or after the run, not during it.
    """
    import wntr

    with _EPANET_CWD, tempfile.TemporaryDirectory(prefix="cityops-epanet-") as tmp:
        back = os.getcwd()
        os.chdir(tmp)
        try:
            return wntr.sim.EpanetSimulator(wn).run_sim(file_prefix=os.path.join(tmp, "run"))
        finally:
            os.chdir(back)


@dataclass
class WaterNetwork:
    """A loaded network. `wn` is the wntr model (SI units: m, m³/s)."""

    path: Path
    file_hash: str
    wn: object
    graph: nx.Graph  # undirected, edge attribute `length_m`, one edge per link (parallel links merged)
    node_xy: dict[str, tuple[float, float]]
    pipe_length_m: dict[str, float]
    link_nodes: dict[str, tuple[str, str]]
    dma_of_node: dict[str, str]
    _dist_cache: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    _csr: object = field(default=None, repr=False)

    @property
    def junctions(self) -> list[str]:
        return list(self.wn.junction_name_list)

    @property
    def pipes(self) -> list[str]:
        return list(self.wn.pipe_name_list)

    @property
    def tanks(self) -> list[str]:
        return list(self.wn.tank_name_list)

    @property
    def reservoirs(self) -> list[str]:
        return list(self.wn.reservoir_name_list)

    def has_node(self, name: str) -> bool:
        return name in self.node_xy

    def has_link(self, name: str) -> bool:
        return name in self.link_nodes

    def dmas(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n, d in self.dma_of_node.items():
            out.setdefault(d, []).append(n)
        return out

    def dma_of_link(self, link: str) -> str:
        a, _ = self.link_nodes[link]
        return self.dma_of_node.get(a, "dma-1")

    def node_distances_m(self, source: str) -> dict[str, float]:
        """Shortest pipe distance from `source` to every reachable node, in metres."""
        if source not in self._dist_cache:
            self._dist_cache[source] = nx.single_source_dijkstra_path_length(self.graph, source, weight="length_m")
        return self._dist_cache[source]

    def node_distance_m(self, a: str, b: str) -> float:
        return float(self.node_distances_m(a).get(b, math.inf))

    def pipe_distance_m(self, pipe_a: str, pipe_b: str) -> float:
        """Pipe distance between the midpoints of two links (0 for the same link)."""
        if pipe_a == pipe_b:
            return 0.0
        a1, a2 = self.link_nodes[pipe_a]
        b1, b2 = self.link_nodes[pipe_b]
        la = self.pipe_length_m.get(pipe_a, 0.0) / 2
        lb = self.pipe_length_m.get(pipe_b, 0.0) / 2
        best = math.inf
        for u in (a1, a2):
            d = self.node_distances_m(u)
            for v in (b1, b2):
                best = min(best, d.get(v, math.inf))
        return float(best + la + lb)

    def pipe_distances_among(self, pipes: list[str], limit_m: float = math.inf) -> np.ndarray:
        """All-pairs pipe distance between the midpoints of `pipes` (as :meth:`pipe_distance_m`), in
        metres; pairs farther apart than `limit_m` come out as inf (the search stops there)."""
        import scipy.sparse as sp
        from scipy.sparse.csgraph import dijkstra

        if len(pipes) == 0:
            return np.zeros((0, 0))
        if self._csr is None:  # (graph, node index), built once
            ix = {n: i for i, n in enumerate(self.graph.nodes)}
            rows, cols, w = [], [], []
            for u, v, d in self.graph.edges(data=True):
                rows.append(ix[u])
                cols.append(ix[v])
                w.append(max(float(d["length_m"]), 1e-3))  # a zero-length link still connects
            self._csr = (sp.csr_matrix((w, (rows, cols)), shape=(len(ix), len(ix))), ix)
        graph, ix = self._csr
        ends = np.array([[ix[self.link_nodes[p][0]], ix[self.link_nodes[p][1]]] for p in pipes], dtype=int)
        uniq, inv = np.unique(ends, return_inverse=True)
        dn = dijkstra(graph, directed=False, indices=uniq, limit=limit_m)  # len(uniq) × all nodes
        inv = inv.reshape(ends.shape)
        half = np.array([self.pipe_length_m.get(p, 0.0) / 2 for p in pipes])
        d = np.full((len(pipes), len(pipes)), np.inf)
        for a in range(2):
            for b in range(2):
                d = np.minimum(d, dn[np.ix_(inv[:, a], ends[:, b])])
        d = d + half[:, None] + half[None, :]
        d[d > limit_m] = np.inf
        np.fill_diagonal(d, 0.0)
        return d

    def link_midpoint_xy(self, link: str) -> tuple[float, float]:
        a, b = self.link_nodes[link]
        (xa, ya), (xb, yb) = self.node_xy[a], self.node_xy[b]
        return (xa + xb) / 2, (ya + yb) / 2


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load_network(path: str | Path, *, dma_of_node: dict[str, str] | None = None, n_dmas: int | None = None) -> WaterNetwork:
    """Load an EPANET file. Raises :class:`NetworkError` with a one-line reason if it is broken."""
    import wntr

    p = Path(path)
    if not p.exists():
        raise NetworkError("file not found")
    if p.is_dir():
        raise NetworkError("is a directory, expected an EPANET .inp file")
    # wntr logs parse problems itself before raising; the caller reports one line instead
    logging.getLogger("wntr").setLevel(logging.CRITICAL)
    try:
        wn = wntr.network.WaterNetworkModel(str(p))
    except Exception as exc:  # wntr raises many types (ENValueError, KeyError, ValueError, RuntimeError …)
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise NetworkError(f"not a valid EPANET network ({msg})") from None
    if wn.num_junctions == 0 or wn.num_links == 0:
        raise NetworkError("not a valid EPANET network (no junctions or no links)")
    if wn.num_reservoirs + wn.num_tanks == 0:
        raise NetworkError("not a valid EPANET network (no reservoir or tank supplies it)")
    _check_epanet_opens(p)

    node_xy = {}
    for name, node in wn.nodes():
        c = node.coordinates
        node_xy[name] = (float(c[0]), float(c[1])) if c is not None else (0.0, 0.0)
    link_nodes: dict[str, tuple[str, str]] = {}
    pipe_length_m: dict[str, float] = {}
    g = nx.Graph()
    g.add_nodes_from(node_xy)
    for name, link in wn.links():
        a, b = link.start_node_name, link.end_node_name
        link_nodes[name] = (a, b)
        length = float(getattr(link, "length", 0.0) or 0.0)
        if name in wn.pipe_name_list:
            pipe_length_m[name] = length
        # pumps and valves have no length; they join their nodes at (almost) no distance
        w = max(length, 1.0)
        if g.has_edge(a, b):
            w = min(w, g[a][b]["length_m"])
        g.add_edge(a, b, length_m=w)
    if dma_of_node is None:
        dma_of_node = partition_dmas(wn.junction_name_list, node_xy, n_dmas)
    # tanks and reservoirs sit in the DMA of their nearest junction
    for n in node_xy:
        if n not in dma_of_node:
            nbrs = list(g.neighbors(n))
            dma_of_node[n] = next((dma_of_node[m] for m in nbrs if m in dma_of_node), "dma-1")
    return WaterNetwork(p, file_hash(p), wn, g, node_xy, pipe_length_m, link_nodes, dict(dma_of_node))


def _check_epanet_opens(p: Path) -> None:
    """Raise NetworkError quoting EPANET's own errors if the EPANET toolkit rejects the file.

    wntr reads files that EPANET refuses (an unconnected junction, a zero-length pipe: common in GIS exports); every
    leak signature and placement is an EPANET run, which then failed deep inside with a bare "Error 200"."""
    from wntr.epanet.exceptions import EpanetException
    from wntr.epanet.toolkit import ENepanet

    with _EPANET_CWD, tempfile.TemporaryDirectory(prefix="cityops-epanet-") as tmp:
        # a copy under a plain name: the toolkit takes Latin-1 paths, and writes its scratch files where it runs
        inp, rpt = os.path.join(tmp, "net.inp"), os.path.join(tmp, "net.rpt")
        shutil.copyfile(p, inp)
        back = os.getcwd()
        os.chdir(tmp)
        en = ENepanet()
        try:
            en.ENopen(inp, rpt, "")
            en.ENclose()
        except EpanetException as exc:
            reasons = _epanet_errors(rpt, en) or [" ".join(str(exc).replace("%s", "").split())]
            more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
            raise NetworkError(f"EPANET rejects it: {'; '.join(reasons[:3])}{more}; correct the .inp "
                               "(e.g. in the EPANET editor) and run again") from None
        finally:
            os.chdir(back)


def _epanet_errors(rpt: str, en) -> list[str]:
    """The input errors EPANET wrote to its report, one line each, without its closing "Error 200"."""
    from wntr.epanet.exceptions import EpanetException

    # the report is complete once the project is closed; closing a project whose open failed may itself fail, and
    # what matters then is what the report already holds
    with contextlib.suppress(EpanetException):
        en.ENclose()
    try:
        lines = Path(rpt).read_text(encoding="latin-1").splitlines()
    except OSError:
        return []
    out: list[str] = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*(Error \d+):\s*(?:Error \d+:\s*)?(.*)", line)
        if not m or m.group(1) == "Error 200":
            continue
        text = f"{m.group(1)}: {' '.join(m.group(2).split())}"
        # EPANET quotes the offending input line on the next one
        nxt = lines[i + 1].strip().rstrip(";").strip() if i + 1 < len(lines) else ""
        if text.endswith(":") and nxt and not nxt.startswith("Error"):
            text = f"{text} {' '.join(nxt.split())}"
        out.append(text[:160])
    return out


def partition_dmas(junctions: list[str], node_xy: dict[str, tuple[float, float]], n_dmas: int | None) -> dict[str, str]:
    """Compact DMAs by position: about one DMA per 300 junctions unless told otherwise."""
    from sklearn.cluster import KMeans

    k = n_dmas or max(1, round(len(junctions) / 300))
    if k <= 1 or len(junctions) < 2 * k:
        return {j: "dma-1" for j in junctions}
    xy = np.array([node_xy[j] for j in junctions])
    labels = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(xy)
    # name DMAs by the order of their centroid west->east so names are stable across runs
    centres = [xy[labels == i, 0].mean() for i in range(k)]
    rank = {int(c): r for r, c in enumerate(np.argsort(centres))}
    return {j: f"dma-{rank[int(lab)] + 1}" for j, lab in zip(junctions, labels, strict=True)}
