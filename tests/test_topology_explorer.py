"""Explorer: parameter validation, static files only, and an end-to-end run in headless
Chromium (slider and brush change what is shown; screenshots in test-artifacts/)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from oncoscale.topology import Cube, build

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from oncoscale.topology import explorer

    rng = np.random.default_rng(11)
    X = rng.uniform(-6, 6, size=(3000, 3))
    centres = np.array([[-3.0, -3.0, 0.0], [3.0, 3.0, 0.0], [3.0, -3.0, 2.0]])
    f = sum((1 + i) * np.exp(-((X - c) ** 2).sum(1) / 2) for i, c in enumerate(centres))
    f = f + rng.normal(0, 0.01, size=f.shape)
    path = build(X, f, out=tmp_path_factory.mktemp("ex") / "cube.duckdb", k=10, bins=32,
                 dims=["alpha", "beta", "gamma"], f_name="score", progress=False, n_jobs=1)
    handle = explorer.start(path, host="127.0.0.1", port=0)
    _HANDLES[handle.url] = handle
    yield handle.url, path
    handle.stop()


_HANDLES: dict = {}


def server_cache(url: str):
    return _HANDLES[url].server.config.app.state.cache


def get(url: str) -> tuple[int, bytes, object]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_api_answers_and_validates_every_parameter(server):
    url, path = server
    status, body, headers = get(url + "api/meta")
    meta = json.loads(body)
    assert status == 200 and meta["names"] == ["alpha", "beta", "gamma", "score"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, body, _ = get(url + "api/hist?axis=beta&p=0.1&baxis=0&blo=-1&bhi=1")
    h = json.loads(body)
    with Cube(path) as cube:
        assert h["counts"] == cube.hist1d(1, 0.1).tolist()
        assert h["brushed"] == cube.hist1d(1, 0.1, brush=(0, -1, 1)).tolist()
    assert get(url + "api/spine?p=0.2")[0] == 200
    # capped views: the most persistent extrema, links among them, totals of the level
    with Cube(path) as cube:
        full = cube.spine(0.0)
        segs = cube.segments(0.0)
    sp = json.loads(get(url + "api/spine?p=0&nodes=3&links=2")[1])
    n_max = int((full["nodes"]["kind"] == "max").sum())
    assert sp["total"]["nodes"]["max"] == n_max > 3
    kinds = np.array(sp["nodes"]["kind"])
    assert (kinds == "max").sum() == 3 and (kinds == "min").sum() == 3
    top = full["nodes"][full["nodes"]["kind"] == "max"].nlargest(3, "persistence")
    assert set(top["extremum"]) == set(np.array(sp["nodes"]["extremum"])[kinds == "max"])
    kept = set(sp["nodes"]["extremum"])
    assert set(sp["links"]["a"]) | set(sp["links"]["b"]) <= kept
    sg = json.loads(get(url + "api/segments?p=0&limit=4")[1])
    assert sg["total"] == len(segs) > 4
    assert sg["segments"]["count"] == sorted(segs["count"], reverse=True)[:4]
    # answers are cached: the same query (numbers written differently) is a hit
    cache = server_cache(url)
    hits = cache.hits
    a = get(url + "api/hist?axis=1&p=0.1&seg=0")[1]
    assert get(url + "api/hist?p=0.10&seg=0&axis=1")[1] == a and cache.hits == hits + 1
    assert get(url + "api/pcoords?bins=16&p=0.2&seg=0")[0] == 200
    assert get(url + "api/hist2d?a=0&b=score&bins=16")[0] == 200
    bad = [
        "api/hist?axis=7", "api/hist?axis=-1", "api/hist?axis=alpha%27%3B--", "api/hist",
        "api/hist?axis=0&p=1.5", "api/hist?axis=0&p=nan", "api/hist?axis=0&p=inf",
        "api/hist?axis=0&p=abc", "api/hist?axis=0&seg=99999", "api/hist?axis=0&seg=1.5",
        "api/hist?axis=0&max=12", "api/hist?axis=0&baxis=1", "api/hist?axis=0&baxis=1&blo=2&bhi=1",
        "api/hist?axis=0&baxis=9&blo=0&bhi=1", "api/hist?axis=0&extra=1",
        "api/hist?axis=0&axis=1", "api/hist2d?a=0&b=0", "api/hist2d?a=0&b=1&bins=7",
        "api/hist2d?a=0&b=1&bins=4096", "api/pcoords?bins=3", "api/pcoords?bins=1",
        "api/spine?p=-0.1", "api/spine?nodes=0", "api/spine?links=x", "api/segments?limit=0",
        "api/segments?p=" + "1" * 100, "api/meta?x=1",
    ]
    for q in bad:
        status, body, _ = get(url + q)
        assert status == 400, q
        assert "error" in json.loads(body), q


def test_serves_only_its_own_files(server):
    url, _ = server
    status, body, headers = get(url)
    assert status == 200 and b"topology explorer" in body
    status, body, headers = get(url + "static/plotly.min.js")
    assert status == 200 and len(body) > 1_000_000 and "javascript" in headers["content-type"]
    assert get(url + "static/app.js")[0] == 200
    for q in ["static/../server.py", "static/..%2Fserver.py", "static/%2e%2e%2fserver.py",
              "static/..%2F..%2F..%2Fetc%2Fpasswd", "static/index.html", "static/server.py",
              "static/%2Fetc%2Fpasswd", "../../etc/passwd", "static/", "api/../../etc/passwd"]:
        status, body, _ = get(url + q)
        assert status == 404, q
        assert b"root:" not in body and b"import" not in body


def test_explore_command_rejects_a_foreign_file(tmp_path):
    from typer.testing import CliRunner

    from oncoscale.cli import app

    junk = tmp_path / "cube.duckdb"
    junk.write_text("not a cube")
    res = CliRunner().invoke(app, ["explore", str(junk), "--port", "0"])
    assert res.exit_code == 2 and "not a DuckDB database" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["explore", str(junk), "--port", "70000"])
    assert res.exit_code != 0


@pytest.mark.browser
def test_browser_slider_and_brush_change_the_view(server):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"headless browser test needs Debian's chromium at {CHROMIUM} "
                    "(apt-get install chromium); not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    url, path = server
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []

    def settled(page, old_gen):
        page.wait_for_function(
            "g => { const s = document.getElementById('status').dataset;"
            " return s.ready === 'true' && s.generation !== g; }", arg=str(old_gen),
            timeout=30_000)
        return page.get_attribute("#status", "data-generation")

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            gen = settled(page, "none")
            page.screenshot(path=str(ARTIFACTS / "topology-explorer-initial.png"), full_page=True)
            st = page.locator("#status")
            before_max = int(st.get_attribute("data-maxima"))
            before_points = page.locator("#spine .scatterlayer .point").count()
            assert before_max > 3 and before_points > 3

            # slider: to the coarsest level, then one step back
            page.focus("#persistence")
            page.keyboard.press("End")
            gen = settled(page, gen)
            assert int(st.get_attribute("data-maxima")) == 1
            assert page.locator("#spine .scatterlayer .point").count() < before_points
            page.keyboard.press("ArrowLeft")
            gen = settled(page, gen)
            assert int(st.get_attribute("data-maxima")) == 2
            page.screenshot(path=str(ARTIFACTS / "topology-explorer-slider.png"), full_page=True)

            # brush: drag across the first histogram
            hist0_total = int(page.get_attribute("#hist-1", "data-total"))
            box = page.locator("#hist-0 .nsewdrag").first.bounding_box()
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] * 0.25, y)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.45, y, steps=5)
            page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
            page.mouse.up()
            gen = settled(page, gen)
            brush = st.get_attribute("data-brush")
            assert brush.startswith("0:")
            _, lo, hi = brush.split(":")
            brushed = int(page.get_attribute("#hist-1", "data-brushed-total"))
            assert 0 < brushed < hist0_total
            with Cube(path) as cube:
                p = float(st.get_attribute("data-p"))
                expect = cube.hist1d(1, p, brush=(0, float(lo), float(hi))).sum()
            assert brushed == expect
            page.screenshot(path=str(ARTIFACTS / "topology-explorer-brush.png"), full_page=True)

            # selecting a segment narrows every view
            page.select_option("#segment", index=1)
            gen = settled(page, gen)
            assert int(st.get_attribute("data-selected")) < 3000
            page.click("#clear")
            gen = settled(page, gen)
            assert st.get_attribute("data-brush") == ""
            page.screenshot(path=str(ARTIFACTS / "topology-explorer-segment.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
