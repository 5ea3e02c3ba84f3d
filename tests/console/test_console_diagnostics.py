"""The run page shows what the loss curves say (issue 20, item 5): the console's API serves the findings
the Diagnostics callback wrote, and the run's files list links diagnostics.json."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from sftkit.evaluate.report import write_report
from sftkit.train.diagnose import Context
from sftkit.train.watch import Diagnostics


def test_run_page_api_and_report_show_the_diagnosis(live, workdir):
    run = workdir / "runs" / "overfit"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: overfit\ntrain:\n  max_steps: 40\n", encoding="utf-8")
    cb = Diagnostics(run / "diagnostics.json", run / "metrics.jsonl",
                     Context(learning_rate=1e-3, epochs=8, train_rows=40), Console(file=io.StringIO()))
    state = SimpleNamespace(is_world_process_zero=True, max_steps=40, global_step=0, epoch=0.0,
                            best_model_checkpoint=str(run / "checkpoints" / "checkpoint-10"))
    args = SimpleNamespace(load_best_model_at_end=False)
    cb.on_train_begin(args, state, None)
    assert json.loads(live.client.get("/api/runs/overfit").text)["diagnostics"] == []  # checked, nothing yet
    for step in range(1, 41):
        state.global_step, state.epoch = step, step / 5
        cb.on_log(args, state, None, logs={"loss": 3.0 - step * 0.07})
        if step % 10 == 0:  # validation loss 2.0, 1.8, 1.9, 2.1: turned up twice
            cb.on_log(args, state, None, logs={"eval_loss": {10: 2.0, 20: 1.8, 30: 1.9, 40: 2.1}[step]})
    cb.on_train_end(args, state, None)

    d = live.client.get("/api/runs/overfit").json()
    assert [f["kind"] for f in d["diagnostics"]] == ["overfitting"]
    f = d["diagnostics"][0]
    assert f["step"] == 40 and "1.8 (step 20) -> 1.9 (step 30) -> 2.1 (step 40)" in f["message"]
    assert any("checkpoint-10" in a and "sft eval" in a for a in f["actions"])
    assert "diagnostics.json" in d["files"]
    assert live.client.get("/api/runs/overfit/files/diagnostics.json").json()["finished"] is True
    html = write_report(run).read_text(encoding="utf-8")
    assert "Training diagnostics" in html and "over-fitting: validation loss rose for 2 evaluations" in html


@pytest.mark.slow
def test_run_page_in_a_browser_shows_the_diagnosis(live_token, workdir):
    """The run page (real headless Chromium) renders the finding: title, numbers, causes, what to do."""
    import shutil

    from console_helpers import TOKEN
    from playwright.sync_api import expect, sync_playwright

    run = workdir / "runs" / "flat-run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: flat-run\ntrain:\n  max_steps: 40\n", encoding="utf-8")
    cb = Diagnostics(run / "diagnostics.json", run / "metrics.jsonl",
                     Context(learning_rate=1e-7, lora_r=8, train_rows=40, trainable_share=0.3),
                     Console(file=io.StringIO()))
    state = SimpleNamespace(is_world_process_zero=True, max_steps=40, global_step=0, epoch=0.0,
                            best_model_checkpoint=None)
    cb.on_train_begin(None, state, None)
    for step in range(1, 41):
        state.global_step = step
        cb.on_log(SimpleNamespace(load_best_model_at_end=False), state, None, logs={"loss": 2.3})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"{live_token.url}/?token={TOKEN}")
            page.goto(f"{live_token.url}/#/run/flat-run")
            box = page.locator("#diagnostics")
            expect(box).to_contain_text("loss is flat: training loss has not fallen after 30 steps")
            expect(box).to_contain_text("learning rate 1e-07")
            expect(box).to_contain_text("30% of training tokens carry loss")
        finally:
            browser.close()
