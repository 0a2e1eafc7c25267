"""The dashboard in a real headless Chromium against `dash-ray up` (tiny models): sign-in by
fragment, submit forms, live progress, images, a training job's loss curve, cancel, admin pause."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.workers.conftest import png_data_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.once]  # what a notebook or the page sees does not depend on the Redis server

def admin_token(up: dict[str, Any]) -> str:
    out = subprocess.run([sys.executable, "-m", "dash_ray.cli", "token", "--user", "root", "--admin"],
                         env=up["env"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def open_page(browser: Any, up: dict[str, Any], token: str) -> Any:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(f"{up['base']}/#token={token}")
    page.wait_for_selector("#conn[data-state=open]", timeout=30_000)
    return page


def submit(page: Any, form: str, timeout_s: float = 30) -> str:
    """Click a form's button; the id of the job row that appears for it."""
    page.wait_for_load_state("networkidle")
    before = page.evaluate("[...window.dash.rows.keys()]")
    page.click(f"#form-{form} button")
    page.wait_for_function("before => [...window.dash.rows.keys()].some((id) => !before.includes(id))",
                           arg=before, timeout=timeout_s * 1000)
    return str(page.evaluate("before => [...window.dash.rows.keys()].find((id) => !before.includes(id))", before))


def wait_status(page: Any, job_id: str, status: str, timeout_s: float = 120) -> None:
    try:
        page.wait_for_selector(f"#jobs tr[data-job='{job_id}'] .status-{status}", timeout=timeout_s * 1000)
    except Exception as exc:  # say what the server and the page hold for it, not just "timeout"
        server = page.evaluate("""async (id) => { const h = {authorization: `Bearer ${sessionStorage.getItem('dash-ray-token')}`};
            const get = async (u) => { const r = await fetch(u, {headers: h}); return `${r.status} ${await r.text()}`; };
            return `job: ${await get(`/v1/jobs/${id}`)}\nqueues: ${await get('/v1/queues')}`; }""", job_id)
        shown = page.evaluate("id => JSON.stringify(window.dash.jobs.get(id) || null)", job_id)
        raise AssertionError(f"job {job_id} not {status} in {timeout_s} s\n{server}\npage: {shown}\n"
                             f"page errors: {page.errors}") from exc


def test_sign_in_by_fragment_generate_and_see_progress_and_the_image(browser: Any, up: dict[str, Any]) -> None:
    page = open_page(browser, up, up["token"])
    assert page.evaluate("location.hash") == ""  # the token left the URL
    assert page.evaluate("sessionStorage.getItem('dash-ray-token')") == up["token"]
    page.wait_for_selector("#queues tr[data-queue=generation]")
    page.fill("#form-generation [name=steps]", "40")
    job_id = submit(page, "generation")
    wait_status(page, job_id, "completed")
    # The whole id is shown (ids are 32 characters here; users choose theirs), and copied by its button.
    assert page.inner_text(f"#jobs tr[data-job='{job_id}'] code.jid") == job_id
    page.click(f"#jobs tr[data-job='{job_id}'] button.copy")
    page.wait_for_function("""id => { const r = getSelection().toString(); const b = document.querySelector(
        `#jobs tr[data-job='${id}'] button.copy`).textContent; return b === 'copied' || r === id; }""", arg=job_id,
                           timeout=5_000)
    img = page.wait_for_selector(f"#jobs tr[data-job='{job_id}'] td.result img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img, timeout=30_000)
    assert "&sig=" in str(img.get_attribute("src")) and "token=" not in str(img.get_attribute("src"))
    seqs = page.evaluate(f"window.dash.seqs['{job_id}']")
    assert seqs == sorted(set(seqs)) and len(seqs) > 5, seqs  # every event once, in order, progress on the way
    progress = page.evaluate(f"window.dash.jobs.get('{job_id}').progress")
    assert progress == 100
    assert page.errors == []
    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('dash-ray-token')") is None
    page.close()


def test_training_from_the_form_shows_epochs_and_the_loss_curve(browser: Any, up: dict[str, Any],
                                                                tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(base64.b64decode(png_data_url(64, 64).split(",", 1)[1]))
    page = open_page(browser, up, up["token"])
    page.click(".tabs button[data-tab=training]")
    page.fill("#form-training [name=loraId]", f"ui-lora-{int(time.time())}")
    page.set_input_files("#form-training [name=files]", [str(png), str(png)])
    page.fill("#form-training [name=epochs]", "3")
    job_id = submit(page, "training")
    # while it runs, the row shows its epoch (recorded as the page changes it)
    page.evaluate("""id => { window.details = []; const cell = document.querySelector(`#jobs tr[data-job='${id}'] .detail`);
        new MutationObserver(() => window.details.push(cell.textContent)).observe(cell, {childList: true,
        characterData: true, subtree: true}); }""", job_id)
    wait_status(page, job_id, "completed", 180)
    curve = page.wait_for_selector(f"#jobs tr[data-job='{job_id}'] canvas.loss")
    assert curve.get_attribute("data-epochs") == "3"
    assert "epoch 3:" in str(curve.get_attribute("title"))
    details = page.evaluate("window.details")
    assert any(d.startswith("epoch ") and "loss" in d for d in details), details
    assert page.errors == []
    page.close()


def test_cancel_a_running_job_and_an_admin_pause_holds_new_jobs(browser: Any, up: dict[str, Any]) -> None:
    page = open_page(browser, up, up["token"])
    page.fill("#form-generation [name=steps]", "150")
    page.fill("#form-generation [name=width]", "256")
    page.fill("#form-generation [name=height]", "256")
    job_id = submit(page, "generation")
    wait_status(page, job_id, "active", 60)
    page.click(f"#jobs tr[data-job='{job_id}'] button.cancel")
    wait_status(page, job_id, "cancelled", 30)
    page.wait_for_selector(f"#jobs tr[data-job='{job_id}'] button.retry")

    admin = open_page(browser, up, admin_token(up))
    admin.wait_for_selector("#queues tr[data-queue=generation] button")
    assert admin.text_content("#who") == "root (admin)"
    # the queue rows are updated in place, not rebuilt under a click every 2 s
    admin.evaluate("document.querySelector('#queues tr[data-queue=generation]').dataset.mark = 'kept'")
    admin.click("#queues tr[data-queue=generation] button")
    admin.wait_for_selector("#queues tr[data-queue=generation] .qstate:text('paused')")
    time.sleep(2.5)  # past the next refresh
    assert admin.get_attribute("#queues tr[data-queue=generation]", "data-mark") == "kept"
    try:
        page.fill("#form-generation [name=steps]", "2")
        page.fill("#form-generation [name=width]", "64")
        page.fill("#form-generation [name=height]", "64")
        held = submit(page, "generation")
        time.sleep(3)
        assert page.text_content(f"#jobs tr[data-job='{held}'] .status") == "waiting"
        # the user puts a later job of theirs first among their waiting ones
        second = submit(page, "generation")
        was = page.evaluate("id => window.dash.jobs.get(id).queuePosition", second)
        page.click(f"#jobs tr[data-job='{second}'] button.front")
        page.wait_for_function("a => window.dash.jobs.get(a[0]).queuePosition !== a[1]", arg=[second, was],
                               timeout=10_000)
        places = page.evaluate("async (ids) => Promise.all(ids.map(async (id) => (await window.dash.api.get(id))"
                               ".queuePosition))", [second, held])
        assert places[0] < places[1], places
        # the admin sees every user's jobs, with the user shown, and can narrow them to one user
        admin.reload()
        admin.wait_for_selector(f"#jobs tr[data-job='{held}']")
        admin.fill("#f-user", "nobody-else")
        admin.dispatch_event("#f-user", "change")
        admin.wait_for_selector(f"#jobs tr[data-job='{held}']", state="detached")
        admin.fill("#f-user", "tester")
        admin.dispatch_event("#f-user", "change")
        admin.wait_for_selector(f"#jobs tr[data-job='{held}']")
        assert admin.text_content(f"#jobs tr[data-job='{held}'] .user") == "tester"
    finally:
        admin.click("#queues tr[data-queue=generation] button")  # resume
    admin.wait_for_selector("#queues tr[data-queue=generation] .qstate:text('running')")
    wait_status(page, held, "completed", 60)
    wait_status(page, second, "completed", 60)
    assert page.errors == [] and admin.errors == []
    admin.close()
    page.close()


def test_a_bad_token_stays_on_sign_in_with_the_reason(browser: Any, up: dict[str, Any]) -> None:
    page = browser.new_page()
    page.goto(f"{up['base']}/#token=not.a.token")
    page.wait_for_selector("#signin:not([hidden])")
    assert "not an API token" in page.text_content("#signin-error")
    page.fill("#token", up["token"] + "x")
    page.click("#signin-form button")
    page.wait_for_function("() => document.querySelector('#signin-error').textContent.includes('refused')")
    page.close()


def test_a_job_from_another_client_appears_live_and_a_search_finds_it(browser: Any, up: dict[str, Any]) -> None:
    from dash_ray.client import Client

    page = open_page(browser, up, up["token"])
    page.wait_for_function("() => window.dash.conn && window.dash.conn.state === 'open'")
    page.wait_for_load_state("networkidle")
    word = f"heron{int(time.time() * 1000)}"
    with Client(up["base"], up["token"]) as client:  # a notebook's client, not the page
        t0 = time.monotonic()
        job = client.submit_generation(f"a grey {word} by the river", settings={"steps": 12, "width": 64, "height": 64})
        page.wait_for_selector(f"#jobs tr[data-job='{job.id}']", timeout=10_000)
        shown_s = time.monotonic() - t0
    print(f"a job submitted from the Python client was on the page {shown_s:.2f} s later")
    wait_status(page, job.id, "completed")
    img = page.wait_for_selector(f"#jobs tr[data-job='{job.id}'] td.result img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img, timeout=30_000)
    seqs = page.evaluate(f"window.dash.seqs['{job.id}']")
    assert seqs[0] == 1 and seqs == sorted(set(seqs)) and len(seqs) > 3, seqs  # from its first event, each once
    # a search by a word of its prompt leaves it alone in the table
    page.fill("#f-q", word.upper())
    page.dispatch_event("#f-q", "change")
    page.wait_for_function("id => { const rows = [...document.querySelectorAll('#jobs tbody tr')];"
                           " return rows.length === 1 && rows[0].dataset.job === id; }", arg=job.id, timeout=10_000)
    page.fill("#f-q", "no prompt says this")
    page.dispatch_event("#f-q", "change")
    page.wait_for_function("() => document.querySelectorAll('#jobs tbody tr').length === 0", timeout=10_000)
    assert page.errors == []
    page.close()


def test_schedules_are_listed_and_deleted_from_the_page(browser: Any, up: dict[str, Any]) -> None:
    from dash_ray.client import Client

    page = open_page(browser, up, up["token"])
    with Client(up["base"], up["token"]) as client:
        client.schedule("hourly-fox", "generation", {"prompt": "a fox", "settings": {"steps": 2, "width": 64,
                                                                                   "height": 64}}, every=3600)
        page.evaluate("window.dash.refreshSchedules()")
        row = page.wait_for_selector("#schedules tr[data-schedule='tester.hourly-fox']", timeout=10_000)
        assert "every 3600 s" in row.inner_text()
        page.click("#schedules tr[data-schedule='tester.hourly-fox'] button.unschedule")
        page.wait_for_selector("#schedules tr[data-schedule='tester.hourly-fox']", state="detached", timeout=10_000)
        assert client.schedules() == []
    assert page.errors == []
    page.close()


def test_usage_against_the_budget_and_an_admins_audit_trail_on_the_page(browser: Any, up: dict[str, Any]) -> None:
    from dash_ray.client import Client

    page = open_page(browser, up, up["token"])
    root = admin_token(up)
    as_root = {"Authorization": f"Bearer {root}"}
    with Client(up["base"], up["token"]) as client:
        job = client.submit_generation("a fox", settings={"steps": 2, "width": 64, "height": 64})
        assert job.wait(timeout=120).status == "completed"
        # the attempt's GPU time reaches the ledger once its worker's reply is recorded
        page.wait_for_function("async () => { await window.dash.refreshUsage();"
                               " return !!document.querySelector(\"#usage tr[data-usage='generation']\"); }",
                               timeout=30_000, polling=1000)
        assert "No GPU budget" in page.text_content("#budget")
        r = httpx.put(f"{up['base']}/v1/budgets/tester", json={"gpuSecondsPerDay": 1e6}, headers=as_root, timeout=10)
        assert r.status_code == 200 and r.json()["gpuSecondsPerDay"]["limit"] == 1e6, r.text
        try:
            page.evaluate("window.dash.refreshUsage()")
            page.wait_for_function("() => document.querySelector('#budget').textContent.includes('1000000 GPU-seconds')",
                                   timeout=10_000)
            admin = open_page(browser, up, root)
            admin.wait_for_selector("#usage tr[data-usage='tester']", timeout=30_000)
            admin.wait_for_selector("#audit-panel:not([hidden])")
            assert "budget.set" in admin.inner_text("#audit") and "tester" in admin.inner_text("#audit")
            assert page.is_hidden("#audit-panel")  # not for a user
            assert admin.errors == []
            admin.close()
        finally:
            httpx.delete(f"{up['base']}/v1/budgets/tester", headers=as_root, timeout=10)
    # a member of a group (`dash-ray token --org`) sees the group's budget too
    out = subprocess.run([sys.executable, "-m", "dash_ray.cli", "token", "--user", "member", "--org", "acme"],
                         env=up["env"], capture_output=True, text=True, timeout=60, check=True)
    r = httpx.put(f"{up['base']}/v1/budgets/org:acme", json={"gpuSecondsPerMonth": 5e5}, headers=as_root, timeout=10)
    assert r.status_code == 200, r.text
    try:
        member = open_page(browser, up, out.stdout.strip())
        member.wait_for_function("async () => { await window.dash.refreshUsage(); return document.querySelector("
                                 "'#budget').textContent.includes(\"Your group acme's budget: 0.0 of 500000\"); }",
                                 timeout=30_000, polling=1000)
        assert "No GPU budget set for you" in member.text_content("#budget")
        assert member.errors == []
        member.close()
    finally:
        httpx.delete(f"{up['base']}/v1/budgets/org:acme", headers=as_root, timeout=10)
    assert page.errors == []
    page.close()
