"""The Python client against a live local stack: Ray Serve gateway (2 replicas), the scheduler
running the real workloads on tiny models, Redis. Every method, sync and async; typed errors;
an event stream that survives a restart of every gateway replica."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    InvalidPayload,
    JobFailed,
    NotFound,
    RateLimited,
    Unauthorized,
)
from dash_ray.config import load_settings
from dash_ray.testing import free_port
from tests.redis.conftest import SECRET

pytestmark = pytest.mark.slow

GEN = {"steps": 2, "width": 64, "height": 64, "seed": 1}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live(ray_session: Any, redis_url: str, tiny_data_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Serve app `dash-client`: 2 gateway replicas on one loopback port, all queues with their
    real runners (tiny models) plus the sleep queue; submits limited to 20 a minute per user."""
    from ray import serve

    from dash_ray.app import build_app, run_gateway
    from dash_ray.gateway import TokenAuth
    from dash_ray.scheduler import queue_specs

    root = tmp_path_factory.mktemp("client")
    settings = load_settings(
        key_prefix=f"cl{uuid.uuid4().hex[:8]}", token_secret=SECRET, data_dir=tiny_data_dir, torch_threads=1,
        artifacts_url=str(root / "artifacts"), gateway_replicas=2, worker_idle_s=30, enable_sleep_queue=True,
        ingress="direct", websocket_port=free_port(), rate_submit="20/minute",
    )
    base = run_gateway(settings, build_app(settings, redis_url, queue_specs(settings, test_queues=True)),
                       "dash-client")
    auth = TokenAuth(SECRET)
    yield {"base": base, "token": auth.mint}
    serve.delete("dash-client")
    serve.shutdown()


def client_for(live: dict[str, Any], user: str | None = None, **kwargs: Any) -> Client:
    return Client(live["base"], live["token"](user or f"u{uuid.uuid4().hex[:6]}"), **kwargs)


@pytest.mark.once  # the workloads through the client: the same on any Redis server
def test_sync_client_generate_upscale_train_and_generate_with_the_lora(live: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    with client_for(live) as c:
        gen = c.submit_generation("a red fox", settings={**GEN, "numImages": 2})
        assert gen.queue == "generation" and len(gen.id) == 32  # an id made by the client
        view = gen.wait(timeout=120, progress=True)
        assert view.status == "completed" and gen.status().status == "completed"
        images = gen.images()
        assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in images)
        def paths(urls: list[str]) -> list[str]:
            return [u.split("?")[0] for u in urls]

        assert paths(gen.result()["images"]) == paths(view.result["images"])
        assert all("&sig=" in u for u in view.result["images"])  # signed links: an <img> needs no token
        files = gen.download(tmp_path / "out")
        assert len(files) == 2 and all(f.read_bytes().startswith(b"\x89PNG") for f in files)

        up = c.submit_upscaling(images[0], scale=2)  # a PIL image goes as a data: URL
        assert up.images()[0].size == (128, 128)
        buf = io.BytesIO()
        images[1].save(buf, format="PNG")
        path = tmp_path / "in.png"
        path.write_bytes(buf.getvalue())
        assert c.submit_upscaling(path, 4).images()[0].size == (256, 256)  # and a path

        train = c.submit_training(f"lora{uuid.uuid4().hex[:6]}", "sks fox", images, priority=1,
                                  settings={"epochs": 2, "resolution": 64, "rank": 4})
        assert train.lora_id == train.id
        # a generation with the LoRA still in training waits for its training job
        with_lora = c.submit_generation("a red fox", settings=GEN, lora=train.lora_id)
        assert with_lora.view.after == [train.id], with_lora.view
        train.wait(timeout=180, progress=True)
        losses = train.losses()
        assert [e for e, _ in losses] == [1, 2] and all(v > 0 for _, v in losses)
        assert "loss" in train._repr_html_()  # the loss curve is drawn into the handle's HTML
        assert with_lora.result(timeout=120)["lora"] == train.lora_id
        assert with_lora.status().started_at >= train.status().finished_at
        html = gen._repr_html_()
        assert html.count("data:image/png;base64") == 2 and "completed" in html


def test_a_cached_resubmit_never_reaches_a_worker_and_identical_submits_run_once(live: dict[str, Any]) -> None:
    """`options.cache` on real workers (tiny model): a second identical submit made while the
    first runs follows it (its own id and events; never started by a worker) and ends with the
    same images; a third, after, is answered at once by the first, completed."""
    token = live["token"]("cache-user")
    settings = {**GEN, "seed": 1234, "steps": 40}
    with Client(live["base"], token) as c:
        first = c.submit_generation("a cached heron", settings=settings, options={"cache": True})
        second = c.submit_generation("a cached heron", settings=settings, options={"cache": True})
        assert second.id != first.id and second.view.same_as == first.id  # one run, two jobs
        done = first.wait(timeout=120)
        follower = second.wait(timeout=60)
        assert done.status == follower.status == "completed"
        assert follower.started_at is None  # no worker ever took it

        def paths(view: Any) -> list[str]:
            return [u.split("?")[0] for u in view.result["images"]]

        assert paths(follower) == paths(done)
        t0 = time.monotonic()
        third = c.submit_generation("a cached heron", settings=settings, options={"cache": True})
        answered_s = time.monotonic() - t0
        assert third.id == first.id and third.view.cached is True and third.view.status == "completed"
        assert paths(third.view) == paths(done)
    print(f"a cached resubmit was answered in {answered_s * 1000:.1f} ms")


def test_generate_then_upscale_as_one_flow_on_ray(live: dict[str, Any]) -> None:
    """A chain made in one step (POST /v1/flows): the generation runs, then the upscale reads the
    image it made (`job://<id>/images/0`) and doubles it."""
    from dash_ray.client import previous_image

    with client_for(live) as c:
        up = c.chain({"queue": "generation", "payload": {"prompt": "a tiny heron", "settings": GEN}},
                     {"queue": "upscaling", "payload": {"imageUrl": previous_image(), "scale": 2}})
        [gen] = up.children
        assert up.queue == "upscaling" and gen.queue == "generation" and up.view.status == "waiting"
        done = up.wait(timeout=180)
        assert done.status == "completed", done
        assert gen.status().status == "completed" and gen.status().parent_id == up.id
        assert up.images()[0].size == (128, 128)  # the generated 64 px image, doubled
        assert gen.status().finished_at <= done.started_at  # the child ran first
        # made alone, at once: the upscale waits for the generation it reads
        gen2 = c.submit_generation("a tiny owl", settings={**GEN, "steps": 40})  # (still running at the next submit)
        up2 = gen2.then_upscale(2)
        assert up2.view.after == [gen2.id] and up2.view.status == "waiting", up2.view
        assert up2.images()[0].size == (128, 128)
        assert gen2.status().finished_at <= up2.status().started_at


def test_sync_client_history_queues_cancel_retry_watch_and_wait_all(live: dict[str, Any]) -> None:
    with client_for(live) as c:
        handles = [c.submit("sleep", {"durationS": 0.2, "steps": 4}) for _ in range(5)]
        seen: dict[str, list[int]] = {}
        for event in c.watch(handles):  # one socket, until all are final
            seen.setdefault(event.job_id, []).append(event.seq)
        assert set(seen) == {h.id for h in handles}
        assert all(seqs == sorted(set(seqs)) for seqs in seen.values())
        assert [v.status for v in c.wait_all(handles, progress=True)] == ["completed"] * 5

        slow = c.submit("sleep", {"durationS": 30, "steps": 300})
        slow.cancel()
        with pytest.raises(JobFailed) as info:
            slow.wait(timeout=30)
        assert info.value.job.status == "cancelled"
        assert slow.retry().status in ("waiting", "active")
        slow.cancel()
        assert slow.wait(timeout=30, raise_on_failure=False).status == "cancelled"

        history = list(c.jobs(queue="sleep", limit=4, page_size=3))  # two pages, fetched lazily
        assert len(history) == 4 and history[0].id == slow.id
        assert [j.id for j in c.jobs(queue="sleep")][1:6] == [h.id for h in reversed(handles)]
        queues = {q.name: q for q in c.queues()}
        assert {"training", "upscaling", "generation"} <= set(queues)
        assert queues["generation"].concurrency >= 1
        with pytest.raises(Forbidden):
            c.pause("sleep")

        # The plug-in queue of tests/plugin_queue.py, through REST: the gateway replicas and the
        # workers learned it from its definition alone (nothing in dash_ray names it).
        assert "echo" in queues
        echo = c.submit("echo", {"text": "hi", "repeat": 3}).wait(timeout=60)
        assert echo.status == "completed" and echo.result["echo"] == "hi hi hi"
    with Client(live["base"], live["token"]("ops", admin=True)) as admin:
        assert admin.pause("sleep").paused
        assert {q.name: q.paused for q in admin.queues()}["sleep"]
        assert not admin.resume("sleep").paused


def test_a_failed_job_raises_job_failed_with_its_error(live: dict[str, Any]) -> None:
    with client_for(live) as c:
        job = c.submit("sleep", {"failAttempts": 5, "failMessage": "out of ink"}, {"attempts": 2, "backoff": {"type": "fixed", "delayS": 1}})
        with pytest.raises(JobFailed) as info:
            job.wait(timeout=60)
        assert "out of ink" in info.value.message and info.value.job.attempts_made == 2


def test_typed_errors_for_401_404_409_422_and_429(live: dict[str, Any]) -> None:
    with Client(live["base"], "not-a-token") as bad, pytest.raises(Unauthorized) as unauthorized:
        bad.submit_generation("x")
    assert unauthorized.value.status == 401
    with client_for(live) as c:
        with pytest.raises(NotFound) as missing:
            c.get("no-such-job")
        assert missing.value.status == 404 and missing.value.code == "not_found"
        c.submit_generation("a cat", settings=GEN, job_id="mine-1")
        with pytest.raises(Conflict):
            c.submit_generation("a dog", settings=GEN, job_id="mine-1")
        assert c.submit_generation("a cat", settings=GEN, job_id="mine-1").id == "mine-1"  # the same job again
        with pytest.raises(InvalidPayload) as invalid:
            c.submit_generation("a cat", settings={"steps": 10_000})
        assert invalid.value.status == 422 and any("steps" in str(e) for e in invalid.value.errors)
    with client_for(live) as c:
        with pytest.raises(RateLimited) as limited:
            for _ in range(25):
                c.submit("sleep", {})
        assert limited.value.status == 429 and (limited.value.retry_after or 0) > 0


def test_async_client(live: dict[str, Any]) -> None:
    async def main() -> None:
        async with AsyncClient(live["base"], live["token"]("async-user")) as c:
            gen = await c.submit_generation("a blue bird", settings=GEN)
            events = [e async for e in gen.events()]
            assert events[0].seq == 1 and events[-1].type == "job:completed"
            assert [e.seq for e in events] == list(range(1, events[-1].seq + 1))
            assert len(await gen.image_bytes()) == 1
            a, b = await c.submit("sleep", {"durationS": 0.1}), await c.submit("sleep", {"durationS": 0.1})
            views = await c.wait_all([a, b], timeout=60)
            assert {v.status for v in views} == {"completed"}
            slow = await c.submit("sleep", {"durationS": 30, "steps": 300})
            await slow.cancel()
            assert (await slow.wait(timeout=30, raise_on_failure=False)).status == "cancelled"
            await slow.retry()
            await c.cancel(slow.id)
            assert (await c.get(slow.id)).status in ("cancelled", "active")
            assert [j.id async for j in c.jobs(limit=2)] == [slow.id, b.id]
            assert len(await c.queues()) >= 3
            with pytest.raises(NotFound):
                await c.job("nope").status()

    asyncio.run(main())


def test_events_survive_a_restart_of_every_gateway_replica(live: dict[str, Any]) -> None:
    """Both replicas are killed while a job runs; the stream reconnects when Serve has started
    new ones and resubscribes with `since`: every seq arrives, once, in order."""
    import ray

    with client_for(live) as c:
        job = c.submit("sleep", {"durationS": 12, "steps": 60})
        seqs: list[int] = []
        killed = False
        t0 = time.monotonic()
        for event in job.events():
            seqs.append(event.seq)
            if not killed and event.type == "job:progress" and event.status == "active" and event.progress >= 10:
                for name in _gateway_replicas("dash-client"):
                    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
                killed = True
            assert time.monotonic() - t0 < 120
        assert killed and seqs == list(range(1, seqs[-1] + 1)), seqs
        assert job.status().status == "completed"


def _gateway_replicas(app: str) -> list[str]:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app}#")]
    assert names
    return names


@pytest.mark.once  # the page's reconnect; the replay under it is checked on every Redis by the test above
def test_the_dashboard_shows_reconnecting_then_every_event_once_across_a_replica_restart(
        live: dict[str, Any], browser: Any) -> None:
    """Both gateway replicas are killed while the page follows a job: it shows `reconnecting`,
    then the job's completion, and its client received every seq of the job exactly once."""
    import ray

    page = browser.new_page()
    page.goto(f"{live['base']}/#token={live['token']('browser-user')}")
    page.wait_for_selector("#conn[data-state=open]", timeout=30_000)
    page.fill("#form-generation [name=steps]", "150")
    page.fill("#form-generation [name=width]", "128")
    page.fill("#form-generation [name=height]", "128")
    page.click("#form-generation button")
    page.wait_for_selector("#jobs tbody tr .status-active", timeout=60_000)
    job_id = page.eval_on_selector("#jobs tbody tr", "tr => tr.dataset.job")
    for name in _gateway_replicas("dash-client"):
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    page.wait_for_selector("#conn[data-state=reconnecting]", timeout=20_000)
    page.wait_for_selector(f"#jobs tr[data-job='{job_id}'] .status-completed", timeout=180_000)
    page.wait_for_selector("#conn[data-state=open]", timeout=30_000)
    seqs = page.evaluate(f"window.dash.seqs['{job_id}']")
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs  # once each, none missing
    assert page.evaluate("window.dash.conn.reconnects") >= 1
    page.close()


def test_the_design_react_component_gets_progress_and_completion(live: dict[str, Any], browser: Any) -> None:
    """The design's TrainingComponent, unchanged, with React from npm (UMD builds and an import
    map: no bundler), on `useJobWebSocket` from clients/js."""
    token = live["token"]("react-user")
    with Client(live["base"], token) as c:
        job = c.submit("sleep", {"durationS": 2, "steps": 10})
    files = _react_files(REACT_PAGE.replace("JOB_ID", job.id).replace("TOKEN", token))
    page = browser.new_page()

    def serve(route: Any) -> None:
        path = route.request.url.split(live["base"], 1)[1].split("?")[0]
        kind = "text/html" if path.endswith(".html") else "text/javascript"
        route.fulfill(status=200, body=files[path], content_type=kind)

    page.route(f"{live['base']}/react-test/**", serve)
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    page.on("pageerror", lambda e: console.append(str(e)))
    page.goto(f"{live['base']}/react-test/page.html")
    try:
        page.wait_for_function("() => window.seen && window.seen.includes('completed')", timeout=60_000)
    except Exception:
        raise AssertionError(f"{page.evaluate('window.seen')} {console[-10:]}") from None
    seen = page.evaluate("window.seen")
    progress = page.evaluate("window.progressSeen")
    assert "active" in seen and max(progress) == 100 and len(progress) >= 5, (seen, progress)
    assert page.text_content("#status") == "completed"
    page.close()


def _react_files(page_html: str) -> dict[str, str]:
    react = ROOT / "clients/js/node_modules/react/umd/react.development.js"
    react_dom = ROOT / "clients/js/node_modules/react-dom/umd/react-dom.development.js"
    if not react.exists():
        if os.environ.get("DASH_REQUIRE_BROWSER"):
            pytest.fail("React is not installed: npm install --prefix clients/js")
        pytest.skip("React is not installed: npm install --prefix clients/js (.ci/run does)")
    return {
        "/react-test/react.umd.js": react.read_text(),
        "/react-test/react-dom.umd.js": react_dom.read_text(),
        "/react-test/react-shim.js": "const R = window.React; export default R; export const {useEffect, useRef, "
                                     "useState, createElement} = R;",
        "/react-test/index.js": (ROOT / "clients/js/src/index.js").read_text(),
        "/react-test/react.js": (ROOT / "clients/js/src/react.js").read_text(),
        "/react-test/page.html": page_html,
    }


def test_use_my_jobs_shows_jobs_made_by_another_client_live(live: dict[str, Any], browser: Any) -> None:
    """`useMyJobs`: the user's jobs made elsewhere (here, the Python client) appear and run to
    their end in the component; another user's never do."""
    token = live["token"]("feed-user")
    files = _react_files(MY_JOBS_PAGE.replace("TOKEN", token))
    page = browser.new_page()
    page.route(f"{live['base']}/react-test/**", lambda route: route.fulfill(
        status=200, body=files[route.request.url.split(live["base"], 1)[1].split("?")[0]],
        content_type="text/html" if route.request.url.split("?")[0].endswith(".html") else "text/javascript"))
    console: list[str] = []
    page.on("pageerror", lambda e: console.append(str(e)))
    page.goto(f"{live['base']}/react-test/page.html")
    with Client(live["base"], token) as c:
        # Once a first job shows (unfinished when the hook began following, or new since), the
        # hook follows: the next ones come from the feed.
        first = c.submit("sleep", {"durationS": 2, "steps": 2})
        page.wait_for_function("id => (window.myJobs || []).some((j) => j.id === id)", arg=first.id, timeout=30_000)
        with Client(live["base"], live["token"]("someone-else")) as other:
            theirs = other.submit("sleep", {"durationS": 0.2, "steps": 2})
        mine = [c.submit("sleep", {"durationS": 0.5, "steps": 5}) for _ in range(2)]
    try:
        page.wait_for_function("ids => ids.every((id) => (window.myJobs || []).some((j) => j.id === id"
                               " && j.status === 'completed' && j.progress === 100))",
                               arg=[j.id for j in mine], timeout=60_000)
    except Exception:
        raise AssertionError(f"{page.evaluate('window.myJobs')} {console[-10:]}") from None
    shown = [j["id"] for j in page.evaluate("window.myJobs")]
    assert shown[:2] == [mine[1].id, mine[0].id] and theirs.id not in shown  # newest first, only hers
    assert page.text_content("#count") == "3"
    page.close()


MY_JOBS_PAGE = """<!doctype html><html><body><p id="count"></p>
<script src="/react-test/react.umd.js"></script>
<script src="/react-test/react-dom.umd.js"></script>
<script type="importmap">{"imports": {"react": "/react-test/react-shim.js"}}</script>
<script type="module">
import { useEffect, createElement } from 'react';
import { useMyJobs } from '/react-test/react.js';
function MyJobs() {
  const jobs = useMyJobs({ url: `ws://${location.host}/ws`, token: 'TOKEN' });
  useEffect(() => { window.myJobs = jobs; document.getElementById('count').textContent = String(jobs.length); }, [jobs]);
  return createElement('ul', null, jobs.map((j) => createElement('li', { key: j.id }, `${j.id} ${j.status} ${j.progress}`)));
}
ReactDOM.createRoot(document.body.appendChild(document.createElement('div'))).render(createElement(MyJobs));
</script></body></html>"""


REACT_PAGE = """<!doctype html><html><body><div id="root"></div><p id="status"></p>
<script src="/react-test/react.umd.js"></script>
<script src="/react-test/react-dom.umd.js"></script>
<script type="importmap">{"imports": {"react": "/react-test/react-shim.js"}}</script>
<script type="module">
import { useEffect, useState, createElement } from 'react';
import { useJobWebSocket } from '/react-test/react.js';
window.seen = []; window.progressSeen = [];
const userId = 'react-user', loraId = 'JOB_ID';
function TrainingComponent() {
  const [trainingProgress, setTrainingProgress] = useState(0);
  const [status, setStatus] = useState('');
  const ws = useJobWebSocket(userId, { url: `ws://${location.host}/ws`, token: 'TOKEN' });

  useEffect(() => {
    const handleProgress = (data) => {
      setTrainingProgress(data.progress);
      setStatus(data.status);
    };

    ws.onmessage = (event) => {
      const data = JSON.parse(event.data);
      if (data.type === 'job:progress') {
        handleProgress(data);
      }
    };

    // Subscribe to job updates
    ws.send(JSON.stringify({
      type: 'subscribe',
      jobIds: [loraId]
    }));
  }, []);
  // not the design's: its completion, from the same socket
  useEffect(() => ws.connection.on('job:completed', () => setStatus('completed')), []);
  useEffect(() => { window.seen.push(status); window.progressSeen.push(trainingProgress);
                    document.getElementById('status').textContent = status; }, [status, trainingProgress]);
  return createElement('div', null, `${status} ${trainingProgress}%`);
}
ReactDOM.createRoot(document.getElementById('root')).render(createElement(TrainingComponent));
</script></body></html>"""


def _ws_events(live: dict[str, Any], token: str, job_id: str, **subscribe: Any) -> list[dict[str, Any]]:
    """Every event of a job on a fresh socket, until its final event."""
    import json

    from websockets.sync.client import connect

    out: list[dict[str, Any]] = []
    with connect(live["base"].replace("http", "ws") + f"/ws?token={token}", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job_id], **subscribe}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv(timeout=60))
            if msg.get("jobId") == job_id and "seq" in msg:
                out.append(msg)
                if msg["type"] in ("job:completed", "job:failed"):
                    return out
    raise AssertionError(f"no final event: {[m['type'] for m in out]}")


def test_generation_streams_latent_previews_that_replay_once_and_can_be_declined(live: dict[str, Any]) -> None:
    import base64

    from PIL import Image

    user = f"u{uuid.uuid4().hex[:6]}"
    token = live["token"](user)
    with client_for(live, user) as c:
        job = c.submit_generation("a fox", settings={"steps": 120, "width": 128, "height": 128, "seed": 3,
                                                      "previewEvery": 1})
        evs = _ws_events(live, token, job.id)
    previews = [e for e in evs if e["type"] == "job:preview"]
    assert len(previews) >= 3 and evs[-1]["type"] == "job:completed", [e["type"] for e in evs]
    times = [p["ts"] for p in previews]
    assert all(b - a >= 0.4 for a, b in itertools.pairwise(times)), times  # at most 2 a second
    for p in previews:
        assert p["kind"] == "latent" and 1 <= p["step"] < 120 and p["steps"] == 120
        head, _, data = p["image"].partition(",")
        assert head == "data:image/webp;base64"
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.load()
        assert img.size[0] >= 64 and img.mode == "RGB"
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(set(seqs))
    mid = previews[1]["seq"] - 1  # reconnect just before the second preview
    again = _ws_events(live, token, job.id, since={job.id: mid})

    def unsigned(e: dict[str, Any]) -> dict[str, Any]:  # result links are signed as they are sent
        return {k: v for k, v in e.items() if k != "result"}

    assert [unsigned(e) for e in again] == [unsigned(e) for e in evs if e["seq"] > mid]  # replayed exactly once
    bare = _ws_events(live, token, job.id, since={job.id: 0}, previews=False)
    first = evs[0]["seq"]  # the first socket began with the job's state then (a late subscriber's snapshot)
    assert [e["seq"] for e in bare if e["seq"] >= first] == [e["seq"] for e in evs if e["type"] != "job:preview"]
    assert not [e for e in bare if e["type"] == "job:preview"]


def test_job_logs_and_training_samples_every_epoch(live: dict[str, Any]) -> None:
    with client_for(live) as c:
        gen = c.submit_generation("a fox", settings=GEN, lora=None)
        gen.wait(timeout=120)
        lines = gen.logs()
        assert any("model tiny" in line for line in lines), lines
        assert any("64x64, 2 steps" in line for line in lines), lines
        assert all(line.split(" ")[1] in ("INFO", "WARNING", "ERROR", "DEBUG") for line in lines)
        train = c.submit_training(f"lora{uuid.uuid4().hex[:6]}", "sks fox", gen.images() * 2,
                                  settings={"epochs": 3, "resolution": 64, "rank": 4, "sampleEvery": 1,
                                            "sampleSteps": 2})
        samples = [e for e in train.events() if e.type == "job:preview"]
        assert [s.epoch for s in samples] == [1, 2, 3] and {s.kind for s in samples} == {"sample"}
        assert samples[0].image.startswith("data:image/webp;base64,")
        assert train.status().status == "completed"
        logs = c.logs(train.id)
        assert [x.split("epoch ", 1)[1].split(":")[0] for x in logs if ": loss " in x] == ["1/3", "2/3", "3/3"]
        assert len(train.previews()) == 3


def test_server_sent_events_resume_from_last_event_id(live: dict[str, Any]) -> None:
    import json
    import shutil
    import subprocess

    import httpx

    token = live["token"](f"u{uuid.uuid4().hex[:6]}")
    h = {"Authorization": f"Bearer {token}"}
    job = httpx.post(f"{live['base']}/v1/jobs/sleep", json={"durationS": 1.5, "steps": 6}, headers=h,
                     timeout=10).json()["id"]

    def read(headers: dict[str, str]) -> list[tuple[int, str, dict[str, Any]]]:
        out = []
        with httpx.stream("GET", f"{live['base']}/v1/jobs/{job}/events", headers={**h, **headers},
                          timeout=60) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            ev: dict[str, str] = {}
            for line in r.iter_lines():
                if not line:
                    if "data" in ev:
                        out.append((int(ev["id"]), ev["event"], json.loads(ev["data"])))
                    ev = {}
                    continue
                key, _, value = line.partition(": ")
                ev[key] = value
        return out

    first = read({})
    assert first[-1][1] == "job:completed" and [s for s, _, _ in first] == sorted({s for s, _, _ in first})
    assert all(kind == data["type"] and seq == data["seq"] for seq, kind, data in first)
    mid = first[len(first) // 2][0]
    assert read({"Last-Event-ID": str(mid)}) == [e for e in first if e[0] > mid]  # no loss, no repeat
    r = httpx.get(f"{live['base']}/v1/jobs/{job}/events", headers={**h, "Last-Event-ID": "x"}, timeout=10)
    assert r.status_code == 422
    assert httpx.get(f"{live['base']}/v1/jobs/{job}/events", timeout=10).status_code == 401
    other = {"Authorization": f"Bearer {live['token']('someone-else')}"}
    assert httpx.get(f"{live['base']}/v1/jobs/{job}/events", headers=other, timeout=10).status_code == 404
    assert httpx.get(f"{live['base']}/v1/jobs/{job}/logs", headers=other, timeout=10).status_code == 404
    if shutil.which("curl"):  # as a person would: curl -N
        out = subprocess.run(["curl", "-sN", "-H", f"Authorization: Bearer {token}",
                              f"{live['base']}/v1/jobs/{job}/events"], capture_output=True, text=True, timeout=60)
        assert out.stdout.count("event: job:") == len(first) and "event: job:completed" in out.stdout


def test_prefer_wait_answers_with_the_finished_job_or_201_once_the_wait_is_over(live: dict[str, Any]) -> None:
    import httpx

    h = {"Authorization": f"Bearer {live['token'](f'u{uuid.uuid4().hex[:6]}')}"}
    t0 = time.monotonic()
    r = httpx.post(f"{live['base']}/v1/jobs/sleep", json={"durationS": 2.0, "steps": 4},
                   headers={**h, "Prefer": "wait=30"}, timeout=40)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed" and r.json()["result"]["slept_s"] >= 2.0
    assert r.headers["preference-applied"] == "wait=30" and time.monotonic() - t0 < 25
    t0 = time.monotonic()
    r = httpx.post(f"{live['base']}/v1/jobs/sleep", json={"durationS": 8.0, "steps": 8},
                   headers={**h, "Prefer": "respond-async, wait=3"}, timeout=40)
    took = time.monotonic() - t0
    assert r.status_code == 201 and r.json()["status"] in ("waiting", "active") and 2.9 <= took < 8, (r.text, took)
    assert "preference-applied" not in r.headers
