"""The console at `/ui` in a real browser (Debian's Chromium, headless, driven by Playwright),
against real etcd, a real xDS replica, two real Envoys and real demo backends.

One walk through what an operator does, because the cluster takes seconds to bring up: sign
in with a token, see every Envoy, drain one and see it leave the DNS answer, add a backend and
see every Envoy ack it, get the API's error next to an invalid weight, run a ring what-if and
get what `/ring/simulate` says; then a reader token, which sees everything and can change
nothing. Screenshots of each page go to the test's tmp dir (`console-*.png`).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.intent.model import Backend, Cluster, Listener, Route
from tests.conftest import wait_for

WRITER = "writer-console-0123456789"
READER = "reader-console-0123456789"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert shutil.which("chromium") == CHROMIUM, "the console tests need Debian's chromium (make test installs it)"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        await b.close()


class _Failing:
    """A real backend on loopback that answers every request 500: an Envoy that sends it
    requests ejects it (outlier detection), one that does not keeps it healthy."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = b"broken\n"
                self.send_response(500)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def failing() -> Iterator[_Failing]:
    f = _Failing()
    yield f
    f.stop()


async def _page(browser: Any, errors: list[str], **options: Any) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    return page


# Every control the page shows has an accessible name (a <label>, aria-label or its text).
_UNLABELLED = """() => [...document.querySelectorAll('input, select, button, textarea')]
  .filter((el) => el.offsetParent !== null)
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
  .map((el) => el.outerHTML.slice(0, 120))"""


async def _labelled(page: Any) -> None:
    assert await page.evaluate(_UNLABELLED) == []


async def _sign_in(page: Any, url: str, token: str) -> None:
    await page.goto(f"{url}/ui")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#live[data-state=live]").wait_for()


# Nothing in these elements scrolls sideways or sticks out of the window (the header row of
# a table shown as cards is visually hidden, for screen readers only, so it is not counted).
_SIDEWAYS_IN = """(selector) => {
  const out = [];
  const say = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' ' + (el.textContent || '').slice(0, 40);
  for (const root of document.querySelectorAll(selector)) {
    for (const el of [root, ...root.querySelectorAll('*')]) {
      if (el.closest('thead')) continue;
      const r = el.getBoundingClientRect();
      if (!r.width) continue;
      const scrolls = getComputedStyle(el).overflowX !== 'visible' && el.scrollWidth > el.clientWidth + 1;
      if (scrolls) out.push('scrolls: ' + say(el));
      if (r.right > window.innerWidth + 1 || r.left < -1) out.push('sticks out: ' + say(el));
    }
  }
  return out;
}"""


async def test_console_in_a_real_browser(
    store: Any,
    replica: Any,
    envoys: Any,
    backends: list[Any],
    failing: _Failing,
    serve_api: Any,
    browser: Any,
    tmp_path: Path,
) -> None:
    from api.localcluster.procs import free_port

    await store.put(Cluster(name="web", load_balancer={"type": "maglev"}))
    for b in backends[:3]:
        await store.put(Backend(name=b.name, address="127.0.0.1", port=b.port), cluster="web")
    # A hashing cluster with no backends and no route, first in the alphabet: the ring view
    # must not open on it.
    await store.put(Cluster(name="aaa-idle", load_balancer={"type": "maglev"}))
    # A cluster whose Envoys health-check it: one live host and one nobody listens on.
    checked = {"active": {"type": "tcp", "interval": "0.2s", "timeout": "0.1s", "unhealthy_threshold": 1,
                          "healthy_threshold": 1}}  # fmt: skip
    await store.put(Cluster(name="checked", health_check=checked))
    await store.put(Backend(name="up", address="127.0.0.1", port=backends[0].port), cluster="checked")
    await store.put(Backend(name="down", address="127.0.0.1", port=free_port()), cluster="checked")
    # A cluster whose one backend answers 500: an Envoy that sends it a request ejects it.
    passive = {"passive": {"consecutive_5xx": 1, "max_ejection_percent": 100, "base_ejection_time": "600s"}}
    await store.put(Cluster(name="flaky", health_check=passive))
    await store.put(Backend(name="f0", address="127.0.0.1", port=failing.port), cluster="flaky")
    port = free_port()
    await store.put(Listener(name="http", address="127.0.0.1", port=port, bind_public_address=True))
    await store.put(
        Route(name="r", listener="http", backends=[{"cluster": "web"}], hash_policies=[{"type": "header", "name": "u"}])
    )
    await store.put(Route(name="flaky", listener="http", match={"prefix": "/flaky"}, backends=[{"cluster": "flaky"}]))
    xds = [("127.0.0.1", replica.port)]
    envoys("cons-0", xds, public_address="127.0.1.61")
    envoys("cons-1", xds, public_address="127.0.1.62")
    url = await serve_api(tokens=f"writer:{WRITER},reader:{READER}")
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {WRITER}"}) as api:
        await _walk(api, url, browser, backends, tmp_path, port)


async def _fleet_node(api: httpx.AsyncClient, node: str) -> dict[str, Any]:
    doc: dict[str, Any] = (await api.get(f"/v1/fleet/{node}")).json()
    return doc


async def _walk(api: httpx.AsyncClient, url: str, browser: Any, backends: list[Any], tmp_path: Path, port: int) -> None:

    async def both_in() -> bool:
        doc = (await api.get("/v1/frontdoor/json")).json()
        return sorted(m["node_id"] for m in doc["in_service"]) == ["cons-0", "cons-1"]

    await wait_for(both_in, 30, "both Envoys in service")

    # Requests to the failing backend through cons-0 only: cons-0 ejects it, cons-1 never
    # sent it anything and sees it healthy.
    async with httpx.AsyncClient(timeout=5) as direct:

        async def ejected_by_cons0() -> bool:
            return (await direct.get(f"http://127.0.1.61:{port}/flaky")).status_code == 500

        await wait_for(ejected_by_cons0, 15, "cons-0 routes /flaky to the failing backend")

    shots = tmp_path
    errors: list[str] = []
    page = await _page(browser, errors)

    # -- sign in; the page, the token and nothing else ------------------------------------
    await page.goto(f"{url}/ui")
    await page.get_by_label("API token").wait_for()
    assert not await page.locator("#view-fleet").is_visible()  # nothing shows before sign-in
    await page.get_by_label("API token").fill("not-the-right-token-at-all")
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#login-error", has_text="not valid").wait_for()
    await page.get_by_label("API token").fill(WRITER)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#live[data-state=live]").wait_for()
    assert await page.evaluate("sessionStorage.getItem('lbcp-token')") == WRITER
    assert WRITER not in page.url

    # -- fleet: every Envoy, live ----------------------------------------------------------
    for node in ("cons-0", "cons-1"):
        await page.locator(f"#node-{node}[data-front=in]").wait_for()
    row = page.locator("#node-cons-0")
    assert "test-replica" in await row.inner_text()
    # The Envoys disagree about the failing backend: the fleet view says which and how.
    disagree = page.locator("#disagree-default li[data-cluster=flaky]")
    await disagree.wait_for()
    assert f"127.0.0.1:{_port_of(await api.get('/v1/clusters/flaky/backends/f0'))}" in await disagree.inner_text()
    await disagree.filter(has_text="cons-0 ejected").filter(has_text="cons-1 healthy").wait_for()
    await _labelled(page)
    await page.screenshot(path=shots / "console-fleet.png", full_page=True)

    # -- drain from the UI, confirmed first: it leaves the DNS answer -----------------------
    await page.get_by_role("button", name="Drain cons-0").click()
    dialog = page.get_by_role("dialog", name="Drain cons-0?")
    await dialog.wait_for()
    said = await dialog.inner_text()
    assert "cons-0 leaves the front door" in said and "Its connections stay" in said
    assert not (await _fleet_node(api, "cons-0"))["draining"]  # nothing happens before the operator confirms
    await _labelled(page)
    await page.screenshot(path=shots / "console-drain-confirm.png")
    await dialog.get_by_role("button", name="Drain", exact=True).click()
    await dialog.wait_for(state="hidden")
    await page.locator("#node-cons-0[data-front=drained]").wait_for()

    # A drain the operator asked for is information, not an alarm: once the replica's probe
    # of the drained Envoy fails (that is how it leaves), the console still shows no failure.
    async def withdrawn() -> bool:
        fh = (await _fleet_node(api, "cons-0")).get("front_health") or {}
        return bool(fh.get("probed")) and fh.get("ok") is False

    await wait_for(withdrawn, 15, "cons-0's front health check fails once drained")
    await page.locator("#node-cons-0 [data-col=health]", has_text="withdrawn").wait_for()
    assert "drained by operator" in await page.locator("#node-cons-0 [data-col=front]").inner_text()
    assert "failing" not in await page.locator("#node-cons-0").inner_text()
    assert await page.locator("#node-cons-0 .bad").count() == 0

    # -- draining the last Envoy in service: the API refuses, the console says so -----------
    await page.get_by_role("button", name="Drain cons-1").click()
    dialog = page.get_by_role("dialog", name="Drain cons-1?")
    await dialog.get_by_role("button", name="Drain", exact=True).click()
    refusal = page.locator("#confirm-refusal[data-code=min-in-service]")
    await refusal.wait_for()
    # The same request as the page's (it is refused again, so it changes nothing): the page
    # shows the API's own words.
    same = await api.post("/v1/fleet/cons-1/drain", json={"reason": "console"})
    assert same.status_code == 409 and same.json()["code"] == "min-in-service"
    assert (await refusal.inner_text()).strip() == same.json()["detail"]
    # The override is the operator's explicit choice, never made for them.
    anyway = dialog.get_by_role("button", name="Drain anyway")
    assert await anyway.is_visible()
    assert await dialog.get_by_role("button", name="Drain", exact=True).count() == 0
    await page.screenshot(path=shots / "console-drain-refused.png")
    assert not (await _fleet_node(api, "cons-1"))["draining"]
    await dialog.get_by_role("button", name="Cancel").click()
    await dialog.wait_for(state="hidden")
    assert not (await _fleet_node(api, "cons-1"))["draining"]
    answer = (await api.get("/v1/frontdoor/dns", params={"zone": "lbcp.test", "name": "www"})).text
    assert "127.0.1.62" in answer
    await page.locator("#node-cons-1[data-front=in]").wait_for()

    await page.get_by_role("link", name="Front door").click()
    await page.locator("#fd-members li[data-node=cons-1]").wait_for()
    await page.locator("#fd-members li[data-node=cons-0]").wait_for(state="detached")
    await page.locator("#fd-dns", has_text="127.0.1.62").wait_for()
    assert "127.0.1.61" not in await page.locator("#fd-dns").inner_text()
    api_dns = (await api.get("/v1/frontdoor/dns", params={"zone": "lbcp.test", "name": "www"})).text
    assert (await page.locator("#fd-dns").inner_text()).strip() == api_dns.strip()
    await _labelled(page)
    await page.screenshot(path=shots / "console-frontdoor.png", full_page=True)

    # -- an evacuation says its rate; overriding the floor is a separate, explicit choice ----
    await page.get_by_role("link", name="Fleet").click()
    await page.get_by_label("Evacuation rate (connections/s)").fill("250")
    await page.get_by_role("button", name="Drain and evacuate cons-1").click()
    dialog = page.get_by_role("dialog", name="Drain and evacuate cons-1?")
    assert "closes" in await dialog.locator("#confirm-evacuation").inner_text()
    assert "250/s" in await dialog.locator("#confirm-evacuation").inner_text()
    await dialog.get_by_role("button", name="Drain and evacuate", exact=True).click()
    await dialog.get_by_role("button", name="Drain and evacuate anyway").click()
    await dialog.wait_for(state="hidden")
    await page.locator("#node-cons-1[data-front=drained]").wait_for()
    forced = await _fleet_node(api, "cons-1")
    assert forced["draining"] and forced["drain"]["evacuate"] == {"connections_per_second": 250}
    await page.get_by_role("button", name="Undrain cons-1").click()
    await page.locator("#node-cons-1[data-front=in]").wait_for()

    # -- add a backend from the UI: acked by every Envoy ------------------------------------
    await page.get_by_role("link", name="Intent").click()
    form = page.locator("#add-web")
    await form.get_by_label("Name").fill("web-new")
    await form.get_by_label("Address").fill("127.0.0.1")
    await form.get_by_label("Port").fill(str(backends[3].port))
    await form.get_by_label("Weight").fill("2")
    await form.get_by_role("button", name="Add backend").click()
    status = page.locator("#add-web-status")
    await status.filter(has_text="acked by 2 of 2 Envoys (complete)").wait_for()
    added = (await api.get("/v1/clusters/web/backends/web-new")).json()
    assert added["weight"] == 2 and added["port"] == backends[3].port
    rollout = (await api.get(f"/v1/rollouts/{added['revision']}")).json()
    assert rollout["complete"] and sorted(rollout["acked"]) == ["cons-0", "cons-1"]
    await page.locator("#backend-web-web-new").wait_for()
    # What the Envoys' own health checks see, from the load the replica reads off them.
    await page.locator("#health-checked", has_text="cons-0 sees 1 of 2 hosts healthy").wait_for()
    await page.locator("#health-checked", has_text="cons-1 sees 1 of 2 hosts healthy").wait_for()
    await page.locator("#health-web", has_text="every host healthy on 2 Envoys").wait_for()
    # ... and per backend: the dead one is failing, in words and in red.
    await page.locator("#cluster-checked").scroll_into_view_if_needed()
    await page.locator("#bhealth-checked-down[data-state=failing]").wait_for()
    await page.locator("#bhealth-checked-up[data-state=healthy]").wait_for()
    await page.locator("#health-checked.bad", has_text="down failing").wait_for()
    listed = (await api.get("/v1/clusters/checked/backends", params={"health": "true"})).json()["items"]
    health = {b["name"]: b["health"] for b in listed}
    assert health["down"]["state"] == "failing" and health["up"]["state"] == "healthy"
    # The Envoys disagree about f0: mixed, and who sees what.
    await page.locator("#cluster-flaky").scroll_into_view_if_needed()
    await page.locator("#bhealth-flaky-f0[data-state=mixed]").wait_for()
    assert await page.locator("#bhealth-flaky-f0-detail").inner_text() == "cons-0 ejected · cons-1 healthy"
    top = await page.locator("#cluster-checked").bounding_box()
    bottom = await page.locator("#cluster-flaky").bounding_box()
    assert top and bottom
    scroll = await page.evaluate("window.scrollY")
    clip = {"x": 0, "y": top["y"] + scroll - 8, "width": 1280, "height": bottom["y"] + bottom["height"] - top["y"] + 16}
    await page.screenshot(path=shots / "console-backend-health.png", full_page=True, clip=clip)

    # -- an invalid weight: the API's own error, next to the field --------------------------
    weight = page.get_by_label("Weight of b0")
    await weight.fill("0")
    await page.get_by_role("button", name="Save b0").click()
    problem = (
        await api.patch(
            "/v1/clusters/web/backends/b0",
            params={"dry_run": "true"},
            json={"weight": 0},
            headers={"content-type": "application/merge-patch+json"},
        )
    ).json()
    [expected] = [e["detail"] for e in problem["errors"] if e["pointer"] == "/weight"]
    await page.locator("#weight-web-b0-error", has_text=expected).wait_for()
    assert await weight.get_attribute("aria-invalid") == "true"
    assert (await api.get("/v1/clusters/web/backends/b0")).json()["weight"] == 1  # nothing was written
    await _labelled(page)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=shots / "console-intent.png", full_page=True)

    # -- changes: the writes and their rollouts --------------------------------------------
    await page.get_by_role("link", name="Changes").click()
    await page.locator(f"#change-{added['revision']} [data-complete=true]").wait_for()
    await page.screenshot(path=shots / "console-changes.png", full_page=True)

    # -- ring: opens on the cluster that carries traffic; ownership, and a what-if ----------
    await page.get_by_role("link", name="Ring").click()
    await page.locator("#share-web-new").wait_for()
    assert await page.get_by_label("Hash cluster").input_value() == "web"
    shown = {
        name: float(await page.locator(f"#share-{name}").get_attribute("data-share") or "nan")
        for name in ("b0", "b1", "b2", "web-new")
    }
    ring = (await api.get("/v1/clusters/web/ring")).json()
    assert shown == {b["name"]: b["share"] for b in ring["backends"]}
    await page.get_by_label("Remove b1").check()
    await page.get_by_label("New weight of web-new").fill("4")
    await page.get_by_role("button", name="Simulate").click()
    moved = page.locator("#moved")
    await moved.wait_for()
    sim = (await api.post("/v1/clusters/web/ring/simulate", json={"remove": ["b1"], "reweight": {"web-new": 4}})).json()
    assert float(await moved.get_attribute("data-fraction") or "nan") == sim["moved_fraction"]
    assert f"{sim['moved_fraction'] * 100:.2f}%" == await moved.inner_text()
    await page.get_by_label("Key (the hash policy's value)").fill("alice")
    await page.get_by_role("button", name="Look up").click()
    picked = (await api.get("/v1/clusters/web/ring/lookup", params={"key": "alice"})).json()["backend"]
    await page.locator("#lookup-result", has_text=f"alice → {picked}").wait_for()
    await _labelled(page)
    await page.screenshot(path=shots / "console-ring.png", full_page=True)

    # -- undrain from the keyboard: back in the answer -------------------------------------
    await page.get_by_role("link", name="Fleet").focus()
    await page.keyboard.press("Enter")
    await page.get_by_role("button", name="Undrain cons-0").focus()
    await page.keyboard.press("Enter")
    await page.locator("#node-cons-0[data-front=in]").wait_for()
    # ... and the keyboard is still where it was: on the same button, now "Drain cons-0".
    await page.get_by_role("button", name="Drain cons-0").and_(page.locator(":focus")).wait_for()

    # -- uneven load: connections held on cons-1 only; the fleet says so, then even again ----
    balance = page.locator("#balance-default")
    await page.locator("#balance-default[data-uneven=false]").wait_for()
    held = [await _hold(port, "127.0.1.62") for _ in range(6)]
    try:
        await page.locator("#balance-default[data-uneven=true]").wait_for()
        said = await balance.inner_text()
        assert "cons-1 has 6" in said and "tolerance 10%" in said, said
        await page.screenshot(path=shots / "console-fleet-uneven.png", full_page=True)
    finally:
        for w in held:
            w.close()
    await page.locator("#balance-default[data-uneven=false]").wait_for()

    # -- narrow screen: the fleet view as cards, nothing scrolls sideways -------------------
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.locator("#node-cons-1").wait_for()
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert await page.evaluate(_SIDEWAYS_IN, "#view-fleet") == []
    for node in ("cons-0", "cons-1"):
        for col in ("node", "front", "conns"):
            cell = page.locator(f"#node-{node} [data-col={col}]")
            box = await cell.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["height"] > 0, (node, col, box)
            assert (await cell.inner_text()).strip()
        assert await page.locator(f"#node-{node} [data-col=front]").inner_text() == "in service"
    await page.screenshot(path=shots / "console-fleet-narrow.png", full_page=True)

    # -- a reader sees everything and can change nothing ------------------------------------
    reader_errors: list[str] = []
    reader = await _page(browser, reader_errors)
    await _sign_in(reader, url, READER)
    await reader.locator("#role", has_text="reader").wait_for()
    await reader.locator("#node-cons-0[data-front=in]").wait_for()
    assert await reader.get_by_role("button", name="Drain cons-0").is_disabled()
    assert await reader.get_by_role("button", name="Rebalance fleet default").is_disabled()
    await reader.get_by_role("link", name="Intent").click()
    await reader.locator("#backend-web-web-new").wait_for()
    assert await reader.get_by_role("button", name="Save b0").is_disabled()
    assert await reader.locator("#add-web").get_by_role("button", name="Add backend").is_disabled()
    # ... and the API refuses it too, whatever the page does.
    status_code = await reader.evaluate(
        """async () => (await fetch('/v1/fleet/cons-1/drain', {method: 'POST',
             headers: {authorization: 'Bearer ' + sessionStorage.getItem('lbcp-token')}})).status"""
    )
    assert status_code == 403
    assert not (await _fleet_node(api, "cons-1"))["draining"]
    await reader.screenshot(path=shots / "console-reader.png", full_page=True)

    # Text from intent and Envoys is shown as text: a hostile drain reason does not run.
    hostile = '<img src=x onerror="window.pwned=1">'
    assert (await api.post("/v1/fleet/cons-1/drain", json={"reason": hostile})).status_code == 201
    await reader.get_by_role("link", name="Fleet").click()
    await reader.locator("#node-cons-1[data-front=drained]").wait_for()
    assert hostile in await reader.locator("#node-cons-1").inner_text()
    assert await reader.evaluate("window.pwned === undefined && !document.querySelector('#fleet-table img')")

    # The browser logs each refused request: the wrong token and the probe before sign-in
    # (401), the reader's write (403), the drain below the floor (409) and the invalid
    # weight (422). Nothing else may show.
    expected = [f"status of {s} " for s in (401, 403, 409, 422)]
    unexpected = [e for e in errors + reader_errors if not any(x in e for x in expected)]
    assert not unexpected, unexpected
    for name in ("fleet", "drain-confirm", "drain-refused", "frontdoor", "intent", "backend-health", "changes", "ring",
                 "fleet-uneven", "fleet-narrow", "reader"):  # fmt: skip
        assert (shots / f"console-{name}.png").stat().st_size > 10_000


def _port_of(resp: httpx.Response) -> int:
    return int(resp.json()["port"])


async def _hold(port: int, host: str) -> asyncio.StreamWriter:
    """One client connection to an Envoy, kept open after one request (keep-alive)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nhost: www\r\nu: held\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    return writer


async def test_intent_view_shows_traffic_policy(serve_api: Any, browser: Any, tmp_path: Path) -> None:
    """The intent view shows each route's, cluster's and listener's traffic policy, one line
    per policy, from the `lbcp apply` examples in docs/examples (through the real API); a
    policy written while the page is open appears in its row; text from intent stays text;
    at 390 px the routes and listeners are cards and nothing scrolls sideways."""
    from api.cli.intent import _apply_ops, _load_docs

    url = await serve_api(tokens=f"writer:{WRITER},reader:{READER}")
    examples = Path(__file__).resolve().parents[2] / "docs" / "examples"
    hostile = '<img src=x onerror="window.pwned=1">'
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {WRITER}"}) as api:
        for name in ("traffic-policy.yaml", "edge-answers.yaml", "observability.yaml"):
            ops = _apply_ops(_load_docs(str(examples / name)), None)
            assert (r := await api.post("/v1/batch", json={"operations": ops})).status_code == 200, r.text
        route = {"listener": "store", "match": {"prefix": "/x/"}, "backends": [{"cluster": "store"}],
                 "cors": {"allow_origins": [hostile]}}  # fmt: skip
        assert (await api.put("/v1/routes/hostile", json=route)).status_code == 201

        errors: list[str] = []
        page = await _page(browser, errors)
        await _sign_in(page, url, WRITER)
        await page.get_by_role("link", name="Intent").click()

        async def said(selector: str) -> str:
            el = page.locator(selector)
            await el.wait_for()
            return str(await el.inner_text()).strip()

        # Routes: one line per policy, in the API's canonical forms (durations, header names).
        api_policy = "#rpolicy-store-api li"
        assert await said(f"{api_policy}[data-policy=retries]") == (
            "retries 2 on connect-failure, reset, 5xx, retriable-status-codes (429), 3s per try, back-off 50ms-500ms"
        )
        assert await said(f"{api_policy}[data-policy=rewrite]") == "rewrite prefix → /, host → store.internal"
        assert await said(f"{api_policy}[data-policy=request_headers]") == (
            "request headers: set x-env; add x-via; remove x-debug"
        )
        assert await said(f"{api_policy}[data-policy=response_headers]") == (
            "response headers: set cache-control; remove server"
        )
        assert await said(f"{api_policy}[data-policy=mirror]") == "mirror 10% to store-shadow"
        assert await said(f"{api_policy}[data-policy=cors]") == (
            "CORS https://app.example.com, /https://.*\\.example\\.com/, with credentials"
        )
        assert await said(f"{api_policy}[data-policy=rate_limit]") == (
            "rate limit 600/1m + 100 burst per x-api-key, fleet-wide (divided over the Envoys)"
        )
        assert await said("#rpolicy-store-users li[data-policy=rewrite]") == (
            "rewrite ^/users/([0-9]+)$ → /api/v2/users/\\1"
        )
        assert await said("#rpolicy-store-chaos li[data-policy=fault]") == (
            "fault: delay 200ms on 10%, abort 503 on 5%"
        )
        assert await said("#rpolicy-store-static li[data-policy=rate_limit]") == (
            "rate limit 50/1s per client address, per Envoy"
        )
        assert await said("#routes-row-store-static [data-label='Hash policies']") == "path (no query)"
        assert await said("#rpolicy-edge-https li[data-policy=redirect]") == (
            "redirect 308 → https://www.example.com:8443"
        )
        assert await said("#rpolicy-edge-docs li[data-policy=redirect]") == "redirect 301 → /manual/… (prefix)"
        assert await said("#rpolicy-edge-retired li[data-policy=redirect]") == "redirect 302 → /, query dropped"
        maintenance = (await api.get("/v1/routes/edge-maintenance")).json()["direct_response"]
        assert await said("#rpolicy-edge-maintenance li[data-policy=direct_response]") == (
            f"answered by Envoy: 503 application/json, {len(maintenance['body'].encode())} bytes"
        )
        assert await said("#routes-row-edge-maintenance [data-label=Backends]") == "- (answered by Envoy)"
        assert await said("#routes-row-edge-health [data-label=Policy]") != "-"
        # Clusters: slow start and the retry budget; listeners: access log and tracing.
        assert await said("#cpolicy-orders li[data-policy=slow_start]") == (
            "slow start over 60s, aggression 1.5, from 10%"
        )
        assert await said("#cpolicy-orders li[data-policy=retry_budget]") == (
            "retry budget 25% of active requests, at least 5"
        )
        assert await page.locator("#cpolicy-store").count() == 0  # no policy, no line
        assert await said("#lpolicy-orders li[data-policy=access_log]") == (
            "access log json (7 fields) → /tmp/lbcp-orders-access.log"
        )
        assert await said("#lpolicy-orders li[data-policy=tracing]") == "tracing 10% → cluster otel as orders-edge"
        assert await said("#lpolicy-orders-debug li[data-policy=tracing]") == ("tracing 100% → 127.0.0.1:4317 as envoy")
        assert await said("#lpolicy-orders-tcp li[data-policy=access_log]") == (
            "access log json (2 fields) → /dev/stdout"
        )
        assert await said("#listeners-row-store [data-label='Logs and tracing']") == "-"
        # Intent's text is shown as text.
        assert hostile in await said("#rpolicy-hostile li[data-policy=cors]")
        assert await page.evaluate("window.pwned === undefined && !document.querySelector('#intent-routes img')")
        await _labelled(page)
        await page.screenshot(path=tmp_path / "console-intent-policy.png", full_page=True)

        # A policy written while the page is open shows in its row (from the intent event).
        patch = {"retries": {"attempts": 3, "on": ["gateway-error"]}, "rate_limit": {"requests": 5, "per": "1h"}}
        assert (await api.patch("/v1/routes/store-chaos", json=patch)).status_code == 200
        limit = page.locator("#rpolicy-store-chaos li[data-policy=rate_limit]", has_text="rate limit 5/1h, per Envoy")
        await limit.wait_for()
        assert await said("#rpolicy-store-chaos li[data-policy=retries]") == "retries 3 on gateway-error"
        assert await page.locator("#rpolicy-store-chaos li").count() == 3  # and the fault is still there

        # Narrow: routes and listeners as cards, every policy line inside the window.
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.locator("#rpolicy-store-api").scroll_into_view_if_needed()
        assert await page.evaluate(_SIDEWAYS_IN, "#intent-routes, #intent-listeners, section.card > ul.policy") == []
        box = await page.locator("#rpolicy-store-api").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        await page.locator("#routes-row-store-api").screenshot(path=tmp_path / "console-intent-policy-narrow.png")
        # The browser logs the probe before sign-in (401); nothing else may show (a CSP
        # violation or a script error would).
        unexpected = [e for e in errors if "status of 401 " not in e]
        assert not unexpected, unexpected
