"""The explorer's web server: Starlette app over a read-only `Cube`.

Routes (all GET):

``/``                      the page (``static/index.html``)
``/static/{name}``         only ``app.js``, ``style.css`` and ``plotly.min.js`` (the latter from
                           the installed ``plotly`` package); any other name is 404
``/api/meta``              axes, sizes, persistence levels
``/api/spine``             surviving extrema and saddle links at ``p``: at most ``nodes`` (default
                           1000) most persistent extrema and ``links`` (default 1000) links per
                           kind (every kept extremum's best saddle first), with totals;
                           the columns the page draws (the library's spine has more)
``/api/segments``          Morse-Smale segments at ``p``: the ``limit`` (default 500) largest,
                           largest first, and the total number
``/api/hist``              1-D histogram of ``axis`` for a selection, optionally brushed
``/api/hist2d``            joint histogram of ``a`` x ``b`` (``bins`` 2..resolution), brushable
``/api/pcoords``           density parallel coordinates (``bins`` 2..64)

Answers are JSON, computed by the `Cube` (in-memory sample codes and hierarchy checkpoints,
see `oncoscale.topology.cube`) and kept in a bounded LRU cache keyed by route and the
normalised parameters, so a repeated view (going back to a level or a selection) is served
without recomputation.

Selections: ``seg`` (segment id at ``p``) or ``max`` / ``min`` (sample index of a surviving
extremum). Brush: ``baxis``, ``blo``, ``bhi`` (data units), all three or none. Every parameter
is validated (known names only, types, ranges, known axes); a bad one gives HTTP 400 with a
JSON ``{"error": ...}`` body.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from oncoscale.errors import ConfigurationError, InputError

STATIC = Path(__file__).with_name("static")
_INT = re.compile(r"^-?\d{1,12}$")
_SELECTION = ("p", "seg", "max", "min", "baxis", "blo", "bhi")
_ALLOWED = {
    "/api/meta": (),
    "/api/spine": ("p", "nodes", "links"),
    "/api/segments": ("p", "limit"),
    "/api/hist": ("axis", *_SELECTION),
    "/api/hist2d": ("a", "b", "bins", *_SELECTION),
    "/api/pcoords": ("bins", *_SELECTION),
}
# capped views the page can draw (the totals of the level are sent with them)
SPINE_MAX_NODES = 1000  # per kind: the most persistent extrema
SPINE_MAX_LINKS = 1000  # per kind: every kept extremum's best saddle first
SEGMENTS_LIMIT = 500  # the largest segments
# the spine columns the page uses (the library's spine has saddle ids and pc2 as well)
_NODE_COLUMNS = ("extremum", "kind", "value", "persistence", "volume", "pc1")
_LINK_COLUMNS = ("kind", "a", "b", "value", "pc1")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-eval'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}


class BadParamError(Exception):
    """A query parameter that fails validation (HTTP 400)."""


class ResponseCache:
    """Thread-safe LRU of encoded JSON bodies, bounded in entries and in bytes."""

    def __init__(self, max_items: int = 1024, max_bytes: int = 64 * 2**20) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return body

    def put(self, key, body: bytes) -> None:
        if len(body) > self.max_bytes // 4:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = body
            self._bytes += len(body)
            while len(self._items) > self.max_items or self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


def plotly_js_path() -> Path:
    """Path of ``plotly.min.js`` inside the installed plotly package."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():  # pragma: no cover - depends on the plotly build
        raise ConfigurationError(f"plotly.min.js not found in the plotly package at {path}")
    return path


def static_files() -> dict[str, tuple[Path, str]]:
    """The only files the server serves: name -> (path, media type)."""
    return {
        "index.html": (STATIC / "index.html", "text/html; charset=utf-8"),
        "app.js": (STATIC / "app.js", "text/javascript; charset=utf-8"),
        "style.css": (STATIC / "style.css", "text/css; charset=utf-8"),
        "plotly.min.js": (plotly_js_path(), "text/javascript; charset=utf-8"),
    }


class Params:
    """Strict reader of a request's query parameters against a cube."""

    def __init__(self, route: str, query: Any, cube) -> None:
        self.cube = cube
        allowed = _ALLOWED[route]
        keys = list(query.keys())
        unknown = sorted(set(keys) - set(allowed))
        if unknown:
            raise BadParamError(f"unknown parameter(s) {unknown}; allowed: {list(allowed)}")
        self.q: dict[str, str] = {}
        for key in keys:
            values = query.getlist(key)
            if len(values) != 1:
                raise BadParamError(f"parameter {key!r} given {len(values)} times, expected once")
            if len(values[0]) > 64:
                raise BadParamError(f"parameter {key!r} is too long")
            self.q[key] = values[0]

    def has(self, key: str) -> bool:
        return key in self.q

    def int(self, key: str, lo: int, hi: int, default: int | None = None) -> int | None:
        if key not in self.q:
            return default
        raw = self.q[key]
        if not _INT.match(raw):
            raise BadParamError(f"{key} must be an integer, found {raw!r}")
        v = int(raw)
        if not lo <= v <= hi:
            raise BadParamError(f"{key} must be in [{lo}, {hi}], found {v}")
        return v

    def float(self, key: str, lo: float, hi: float, default: float | None = None) -> float | None:
        if key not in self.q:
            return default
        raw = self.q[key]
        try:
            v = float(raw)
        except ValueError:
            raise BadParamError(f"{key} must be a number, found {raw!r}") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise BadParamError(f"{key} must be a finite number in [{lo}, {hi}], found {raw!r}")
        return v

    def axis(self, key: str, required: bool = True) -> int | None:
        if key not in self.q:
            if required:
                raise BadParamError(f"missing parameter {key!r}")
            return None
        raw = self.q[key]
        if _INT.match(raw):
            v = int(raw)
            if 0 <= v <= self.cube.d:
                return v
        elif raw in self.cube.names:
            return self.cube.names.index(raw)
        raise BadParamError(f"{key} must be an axis number in [0, {self.cube.d}] or one of "
                       f"{self.cube.names}, found {raw!r}")

    def persistence(self) -> float:
        return self.float("p", 0.0, 1.0, 0.0)

    def selection(self, p: float) -> np.ndarray | None:
        seg = self.int("seg", 0, 10**9)
        mx = self.int("max", 0, self.cube.n - 1)
        mn = self.int("min", 0, self.cube.n - 1)
        try:
            return self.cube.select(p, segment=seg, maximum=mx, minimum=mn)
        except InputError as exc:
            raise BadParamError(str(exc)) from None

    def brush(self) -> tuple[int, float, float] | None:
        present = [k for k in ("baxis", "blo", "bhi") if k in self.q]
        if not present:
            return None
        if len(present) != 3:
            raise BadParamError("a brush needs all of baxis, blo, bhi")
        ax = self.axis("baxis")
        lo = self.float("blo", -1e300, 1e300)
        hi = self.float("bhi", -1e300, 1e300)
        if lo > hi:
            raise BadParamError(f"brush needs blo <= bhi, found [{lo}, {hi}]")
        return ax, lo, hi

    def key(self) -> tuple:
        """The parameters as a cache key (numbers normalised: ``p=0.10`` is ``p=0.1``)."""
        out = []
        for k, v in sorted(self.q.items()):
            try:
                num = float(v)
                out.append((k, num if math.isfinite(num) else v))
            except ValueError:
                out.append((k, v))
        return tuple(out)


def _columns(df, columns=None) -> dict[str, list]:
    """A DataFrame as {column: list} (numpy's tolist: much faster than DataFrame.to_dict)."""
    return {c: df[c].to_numpy().tolist() for c in (df.columns if columns is None else columns)}


def _levels(cube, limit: int = 2000) -> list[float]:
    lv = cube.levels()
    if lv.shape[0] > limit:  # keep the slider usable: the highest levels matter most
        lv = lv[-limit:]
    return [float(x) for x in lv]


def create_app(cube_path: str | Path, cache_bytes: int = 64 * 2**20):
    """The Starlette application serving ``cube_path`` (opened read-only, validated now, its
    whole-data tables loaded); answers are cached up to ``cache_bytes`` (0: no cache)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    from oncoscale.topology.cube import Cube

    cube = Cube(cube_path)
    cube.warm()
    cube.spine(0.0, SPINE_MAX_NODES, SPINE_MAX_LINKS)  # the slider's leftmost view
    files = static_files()
    cache = ResponseCache(max_bytes=cache_bytes)

    def json(data: Any, status: int = 200) -> Response:
        return JSONResponse(data, status_code=status, headers=_SECURITY_HEADERS)

    def page(request: Request) -> Response:
        path, media = files["index.html"]
        return FileResponse(path, media_type=media, headers=_SECURITY_HEADERS)

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files or name == "index.html":
            return Response("not found", status_code=404, media_type="text/plain",
                            headers=_SECURITY_HEADERS)
        path, media = files[name]
        return FileResponse(path, media_type=media, headers=_SECURITY_HEADERS)

    def api(fn):
        route = "/api/" + fn.__name__

        def endpoint(request: Request) -> Response:
            try:
                q = Params(route, request.query_params, cube)
                key = (route, q.key())
                body = cache.get(key) if cache_bytes else None
                if body is None:
                    body = json(fn(q)).body
                    if cache_bytes:
                        cache.put(key, body)
                return Response(body, media_type="application/json", headers=_SECURITY_HEADERS)
            except BadParamError as exc:
                return json({"error": str(exc)}, 400)
            except (InputError, ConfigurationError) as exc:
                return json({"error": str(exc)}, 400)

        return Route(route, endpoint, methods=["GET"])

    def meta(q: Params) -> dict:
        return {
            "n": cube.n, "d": cube.d, "names": cube.names, "bins": cube.bins,
            "f_name": cube.meta.get("f_name", "f"), "levels": _levels(cube),
            "has_hist3d": cube.has_hist3d,
            "lo": [float(v) for v in cube.axes["lo"]], "hi": [float(v) for v in cube.axes["hi"]],
            "graph": {k: cube.meta.get(k) for k in ("k", "beta", "relaxed", "knn_method",
                                                    "knn_recall", "n_edges", "n_leaves")},
        }

    def spine(q: Params) -> dict:
        sp = cube.spine(q.persistence(), max_nodes=q.int("nodes", 1, 10**7, SPINE_MAX_NODES),
                        max_links=q.int("links", 1, 10**7, SPINE_MAX_LINKS))
        nodes = sp["nodes"]
        nodes["persistence"] = nodes["persistence"].replace([np.inf], -1.0)
        return {"nodes": _columns(nodes, _NODE_COLUMNS),
                "links": _columns(sp["links"], _LINK_COLUMNS),
                "total": {"nodes": nodes.attrs["total"], "links": sp["links"].attrs["total"]}}

    def segments(q: Params) -> dict:
        segs = cube.segments(q.persistence(), largest=q.int("limit", 1, 10**7, SEGMENTS_LIMIT))
        return {"segments": _columns(segs), "total": segs.attrs["total"]}

    def hist(q: Params) -> dict:
        p = q.persistence()
        a = q.axis("axis")
        leaves = q.selection(p)
        brush = q.brush()
        base = cube.hist1d(a, p, leaves)
        out = {"axis": a, "lo": float(cube.axes["lo"][a]), "hi": float(cube.axes["hi"][a]),
               "bins": cube.bins, "counts": base.tolist(), "brushed": None}
        if brush is not None:
            out["brushed"] = cube.hist1d(a, p, leaves, brush).tolist()
        return out

    def hist2d(q: Params) -> dict:
        p = q.persistence()
        a, b = q.axis("a"), q.axis("b")
        if a == b:
            raise BadParamError("a and b must be different axes")
        bins = q.int("bins", 2, cube.bins, min(64, cube.bins))
        if cube.bins % bins:
            raise BadParamError(f"bins must divide the cube resolution {cube.bins}, found {bins}")
        leaves = q.selection(p)
        brush = q.brush()
        brushed = brush is not None and cube.brushable(a, b, brush[0])
        h = cube.hist2d(a, b, p, leaves, brush if brushed else None, bins=bins)
        return {"a": a, "b": b, "bins": int(h.shape[0]), "counts": h.tolist(),
                "brushed": brushed,
                "lo": [float(cube.axes["lo"][a]), float(cube.axes["lo"][b])],
                "hi": [float(cube.axes["hi"][a]), float(cube.axes["hi"][b])]}

    def pcoords(q: Params) -> dict:
        p = q.persistence()
        bins = q.int("bins", 2, min(64, cube.bins), min(32, cube.bins))
        if cube.bins % bins:
            raise BadParamError(f"bins must divide the cube resolution {cube.bins}, found {bins}")
        leaves = q.selection(p)
        res = cube.pcoords(None, p, leaves, q.brush(), bins=bins)
        return {"bins": bins, "pairs": [{"counts": h.tolist(), "brushed": ok} for h, ok in res]}

    def favicon(request: Request) -> Response:
        return Response(status_code=204, headers=_SECURITY_HEADERS)

    routes = [Route("/", page, methods=["GET"]),
              Route("/favicon.ico", favicon, methods=["GET"]),
              Route("/static/{name}", static, methods=["GET"])]
    routes += [api(fn) for fn in (meta, spine, segments, hist, hist2d, pcoords)]
    app = Starlette(routes=routes)
    app.state.cube = cube
    app.state.cache = cache
    return app
