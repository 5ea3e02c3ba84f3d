"""End to end in a real headless Chromium: `sft console` (the CLI, with an access token) is
opened in the browser. A run started through the API is stopped and resumed with the page's
buttons; a run of the tiny model is created through the form (data check, length statistics,
the YAML editor, the estimate), watched live until it has trained and been evaluated against
its base, its report is opened, it is compared with the other run, and chatted with while its
base model answers beside it. Every run is real training in `sft train`
subprocesses. Screenshots go to test-artifacts/console/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from console_helpers import TOKEN, run_yaml, stop_jobs, wait_for

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def console(workdir: Path, tiny_model_dir: Path) -> Iterator[str]:
    """`python -m sftkit.cli console` in the data folder (the model's folder allowed: it is
    elsewhere); yields the URL it printed."""
    from console_helpers import free_port

    port = free_port()
    errlog = (workdir / "console.stderr").open("w")  # a file, not a pipe nobody reads (it could fill up)
    proc = subprocess.Popen([sys.executable, "-m", "sftkit.cli", "console", "--port", str(port), "--runs", "runs",
                             "--token", TOKEN, "--allow", str(tiny_model_dir)], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=errlog, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("sftkit console: http://127.0.0.1:"), (line, (workdir / "console.stderr").read_text())
        url = line.split()[2]
        assert url.endswith(f"/?token={TOKEN}")  # the printed URL carries the token
        origin = url.split("?")[0]
        wait_for(lambda: _up(origin), 30, "the console to answer", every=0.2)
        yield origin
    finally:
        runs = workdir / "runs"
        stop_jobs([p for p in runs.iterdir() if (p / "console_job.json").is_file()] if runs.is_dir() else [])
        proc.terminate()
        proc.wait(15)
        errlog.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def _fill_new_run(page, tiny_model_dir: Path) -> None:
    page.fill("#f-name", "客服-全参")
    page.fill("#f-model-name_or_path", str(tiny_model_dir))
    page.click('[data-browse="data.train"]')  # the file picker opens in the console's folder
    page.click('#picker a[data-path$="/train.jsonl"]')
    page.fill("#f-data-test", "test.jsonl")
    page.click("#check-data")
    page.wait_for_selector("#check-result")
    assert "messages" in page.inner_text("#check-result") and "32" in page.inner_text("#check-result")
    page.wait_for_selector("#rec-cutoff", timeout=60_000)
    rec = page.inner_text("#rec-cutoff")
    page.locator("[data-cutoff]").first.click()
    assert page.input_value("#f-data-cutoff_len") == rec
    assert page.locator("#stats svg.chart rect").count() > 3  # the length histogram is drawn
    shot(page, "02-new-run-data.png")
    page.select_option("#f-method-type", "full")
    for key, value in {"train-max_steps": "12", "train-learning_rate": "0.01", "train-logging_steps": "1",
                       "train-warmup_ratio": "0"}.items():
        page.fill(f"#f-{key}", value)
    page.click('details[data-section="eval"] > summary')
    page.uncheck("#f-eval-forgetting_check")


def _edit_yaml(page) -> None:
    page.click('.tabs button[data-tab="yaml"]')
    expect(page.locator("#yaml-editor")).to_have_value(re.compile("max_steps: 12"))
    text = page.input_value("#yaml-editor")
    assert "max_steps: 12" in text and "type: full" in text and "forgetting_check: false" in text
    page.fill("#yaml-editor", text + "  max_new_tokens: 12\n")  # eval: is the last section
    page.click('.tabs button[data-tab="form"]')
    # the YAML edit comes back into the form
    expect(page.locator("#f-eval-max_new_tokens")).to_have_value("12")


def _check_and_start(page) -> str:
    page.click("#check-config")
    page.wait_for_selector("#estimate", timeout=60_000)
    assert "output_dir:" in page.inner_text("#run-yaml") and "launch.yaml" in page.inner_text("#run-command")
    shot(page, "03-new-run-check.png")
    page.click("#start")
    page.wait_for_url("**/#/run/**")
    return page.url


def _watch(page) -> None:
    # Curves appear while the run is still running: the page updates itself (no reload here).
    # (the page's CSP forbids eval, so waits use selectors, not wait_for_function)
    page.wait_for_selector("#charts polyline", timeout=180_000)
    assert page.locator('.badge[data-status="running"]').count() == 1
    assert page.inner_text("#log").strip()
    shot(page, "04-run-live.png")
    page.wait_for_selector('.badge[data-status="finished"]', timeout=240_000)
    page.wait_for_selector("#results")
    # A full fine-tuning run is evaluated against its base model (sft eval --baseline BASE).
    assert "base (before)" in page.inner_text("#results") and "tuned (after)" in page.inner_text("#results")
    frame = page.frame_locator("#report-frame")
    assert "Evaluation: before and after" in frame.locator("body").inner_text()
    assert "baseline (before)" in frame.locator("body").inner_text()
    assert "Examples that changed" in frame.locator("body").inner_text()
    shot(page, "05-run-finished.png")


def _open_report(page) -> None:
    with page.expect_popup() as popup:
        page.click("#open-report")
    report = popup.value
    report.wait_for_load_state()
    assert "sftkit report" in report.title()
    shot(report, "05b-report.png")
    report.close()


def _clone(page) -> None:
    """"New run from this config": the run's YAML in the editor, under a new name."""
    page.click("#clone")
    editor = page.locator("#yaml-editor")
    expect(editor).to_have_value(re.compile("name: 客服-全参-2"))
    assert "max_steps: 12" in editor.input_value() and "output_dir" not in editor.input_value()


def _compare(page, origin: str) -> None:
    page.goto(f"{origin}/#/runs")
    page.wait_for_selector('input[data-run="lora-b"]')
    assert page.locator('.badge[data-status="finished"]').count() == 2
    shot(page, "06-runs-zh.png")
    page.check('input[data-run="lora-b"]')
    page.check('input[data-run="客服-全参"]')
    page.click("#compare-selected")
    page.wait_for_selector("#compare-charts polyline")
    diff = page.inner_text(".config-diff")
    assert "method.type" in diff and "train.learning_rate" in diff and "full" in diff and "lora" in diff
    assert page.locator("#compare-charts polyline").count() >= 2
    shot(page, "07-compare-zh.png")


def _chat(page, origin: str, tiny_model_dir: Path) -> None:
    page.goto(f"{origin}/#/chat?run=客服-全参")
    page.wait_for_selector("#chat-target")
    assert page.input_value("#chat-target") == "run:客服-全参"
    page.fill("#chat-max", "32")
    page.fill("#chat-input", "如何查询用户余额？")
    page.click("#chat-send")
    page.wait_for_selector("#col-model .msg.assistant.done", timeout=120_000)
    page.wait_for_selector("#col-baseline .msg.assistant.done", timeout=120_000)
    tuned = page.inner_text("#col-model .msg.assistant .text")
    base = page.inner_text("#col-baseline .msg.assistant .text")
    assert tuned != base  # 12 full fine-tuning steps changed the greedy answer
    assert str(tiny_model_dir) in page.inner_text('[data-side="baseline"] h3')  # the base model answered
    shot(page, "08-chat-zh.png")


def _stop_and_resume(page, origin: str, run_dir: Path) -> None:
    """Stop lora-b with the page's button once it has a complete checkpoint, then resume it."""
    page.goto(f"{origin}/#/run/lora-b")
    page.wait_for_selector('.badge[data-status="running"]', timeout=60_000)
    wait_for(lambda: any((p / "sftkit_complete.json").is_file() for p in (run_dir / "checkpoints").glob("ch*")),
             120, "a complete checkpoint", every=0.1)
    page.click("#stop")  # SIGINT to the job's process group, like Ctrl-C
    page.wait_for_selector('.badge[data-status="stopped"]', timeout=60_000)
    state = json.loads((run_dir / "console_state.json").read_text())
    assert state["stopped"] and state["outcome"] == "stopped" and "report" not in state["returncodes"]
    assert not (run_dir / "train_summary.json").exists()
    shot(page, "01-run-stopped.png")
    page.click("#resume")  # sft train CONFIG --resume: from the last complete checkpoint
    page.wait_for_selector('.badge[data-status="running"]')


def _check_resumed(api: httpx.Client, run_dir: Path, steps: int) -> None:
    d = wait_for(lambda: (x := api.get("/api/runs/lora-b").json())["status"] != "running" and x, 180, "lora-b")
    assert d["status"] == "finished", d
    assert json.loads((run_dir / "train_summary.json").read_text())["global_step"] == steps
    logged = [r["step"] for r in api.get("/api/runs/lora-b/metrics").json()["rows"] if "loss" in r]
    assert logged == sorted(set(logged)) and logged[-1] == steps  # one curve, no step twice
    log = api.get("/api/runs/lora-b/log?offset=0").json()["text"]
    assert log.count("== sftkit console: train: sft train") == 2 and "--resume auto" in log


def test_console_end_to_end(console, workdir, tiny_model_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    api = httpx.Client(base_url=console, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    # A run through the API, to stop, resume and compare with.
    steps_b = 12
    r = api.post("/api/runs", json={"yaml": run_yaml("lora-b", tiny_model_dir, steps_b, lr=5e-3,
                                                     extra_train="  save_steps: 4\n")})
    assert r.status_code == 201, r.text
    origin = console.rstrip("/")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="en-US")
            page.set_default_timeout(30_000)
            foreign, errors = [], []
            page.on("request", lambda req: req.url.startswith((origin, "data:", "blob:")) or foreign.append(req.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{origin}/#/runs")
            page.wait_for_selector("#token")  # no token yet: the page asks for it
            page.goto(f"{origin}/?token={TOKEN}")  # sets the cookie, then the page works
            _stop_and_resume(page, origin, workdir / "runs" / "lora-b")
            page.goto(f"{origin}/#/new")
            page.wait_for_selector("#f-name")
            _fill_new_run(page, tiny_model_dir)
            _edit_yaml(page)
            _check_and_start(page)
            _watch(page)
            _open_report(page)
            _clone(page)
            _check_resumed(api, workdir / "runs" / "lora-b", steps_b)
            page.click("#lang")  # 中文 from here on
            _compare(page, origin)
            _chat(page, origin, tiny_model_dir)
            assert not foreign, f"the page fetched from elsewhere: {foreign}"
            assert not errors, errors
        finally:
            browser.close()
    state = json.loads((workdir / "runs" / "客服-全参" / "console_state.json").read_text())
    assert state["outcome"] == "finished" and state["returncodes"] == {"train": 0, "eval": 0, "report": 0}
