"""report.html from a synthetic run folder: self-contained, charts, tables, flips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sftkit.evaluate.report import svg_bar_chart, svg_line_chart, write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "demo-run"
    run.mkdir()
    cfg = {
        "name": "demo-run",
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "template": None,
        "data": {"train": [{"path": "train.jsonl"}], "test": [{"path": "test.jsonl"}], "cutoff_len": 512},
        "method": {"type": "lora", "r": 8, "alpha": 16},
        "train": {"learning_rate": 2e-4, "num_train_epochs": 3, "per_device_train_batch_size": 8},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with (run / "metrics.jsonl").open("w") as f:
        for step in range(5, 105, 5):
            f.write(json.dumps({"step": step, "epoch": step / 35, "loss": 2.5 / (1 + step / 40), "lr": 2e-4}) + "\n")
            if step % 35 == 0:
                f.write(json.dumps({"step": step, "eval_loss": 2.2 / (1 + step / 60)}) + "\n")
        f.write('{"step": 105, "lo')  # a half-written line of a live run is ignored
    report = {
        "files": {
            "train": [
                {"path": "train.jsonl", "format": "alpaca", "total": 120, "valid": 118, "rejected": 2, "used": 118}
            ],
            "val": [],
        },
        "train_examples": 106,
        "val_examples": 12,
        "rejected": 2,
        "truncated": 1,
        "lengths": [40, 52, 77, 90, 120, 130, 131, 200, 260, 300],
    }
    (run / "data_report.json").write_text(json.dumps(report))
    (run / "rejected.jsonl").write_text(
        json.dumps({"file": "train.jsonl", "line": 7, "reason": "empty reply", "raw": '{"instruction": "<b>hi</b>"}'})
        + "\n"
    )
    ev = {
        "model": {"accuracy": 0.8, "macro_f1": 0.75, "loss": 0.9, "ppl": 2.46},
        "baseline": {"accuracy": 0.5, "macro_f1": 0.4, "loss": 1.8, "ppl": 6.05},
        "delta": {"accuracy": 0.3, "macro_f1": 0.35, "loss": -0.9, "ppl": -3.59},
        "n": 10,
        "metrics": ["classification"],
        "flips": [
            {
                "i": 0,
                "direction": "wrong_to_right",
                "prompt": "情感:太好了",
                "reference": "positive",
                "model": "positive",
                "baseline": "I think <script>",
            },
            {
                "i": 3,
                "direction": "right_to_wrong",
                "prompt": "Sentiment: fine",
                "reference": "neutral",
                "model": "positive",
                "baseline": "neutral",
            },
        ],
        "latency": {"k_s_per_token": 0.02, "b_s": 0.15, "tokens_per_s": 50.0, "n": 4},
        "forgetting": {"n": 30, "model": 0.6, "baseline": 0.63, "delta": -0.03},
        "details": {
            "model": {
                "classification": {
                    "per_label": {
                        "positive": {"precision": 0.8, "recall": 1.0, "f1": 0.89, "support": 4},
                        "neutral": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2},
                        "": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
                    },
                    "labels": ["neutral", "positive", ""],
                    "confusion": [[1, 1, 0], [0, 3, 1], [0, 0, 0]],
                }
            }
        },
        "refs": {"model": "runs/demo-run", "baseline": "smollm2 (base)"},
        "data": "test.jsonl",
    }
    (run / "eval.json").write_text(json.dumps(ev, ensure_ascii=False))
    return run


def test_report_contents(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") >= 4  # loss, lr, length histogram, metrics bars
    assert "<polyline" in page and "validation loss" in page
    assert "<table" in page and "baseline (before)" in page and "macro_f1" in page
    assert "<script" not in page.lower().replace("&lt;script&gt;", "")  # user text is escaped, never code
    assert "<link" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "情感:太好了" in page and "wrong → right" in page and "right → wrong" in page
    assert "empty reply" in page and "&lt;b&gt;hi&lt;/b&gt;" in page
    assert "t = k·x + b" in page
    assert "General-ability check" in page
    assert "Confusion matrix" in page and "(empty)" in page  # an empty answer is a visible label


def test_report_without_eval(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {name_or_path: x}\n")
    page = write_report(tmp_path).read_text()
    assert "sft eval" in page and "No training logs" in page


def test_svg_charts_are_well_formed():
    import xml.etree.ElementTree as ET

    ET.fromstring(svg_line_chart({"a": [(0, 1.0), (1, 0.5)], "b": [(1, 0.7)]}, "t", xlabel="x", ylabel="y"))
    ET.fromstring(svg_bar_chart(["acc", "f1"], {"before": [50, None], "after": [80, -5.0]}, "bars"))
    assert svg_line_chart({"a": []}) == "" and svg_bar_chart([], {}) == ""


def test_report_screenshot(run_dir):
    """Optional: render the page in headless Chromium and keep a screenshot."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    page_path = write_report(run_dir)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(page_path.as_uri())
            assert page.locator("svg").count() >= 4
            loss_chart = page.locator("svg", has_text="validation loss").first
            assert loss_chart.is_visible() and loss_chart.bounding_box()["height"] > 100
            table = page.locator("table", has_text="baseline (before)").first
            assert table.is_visible() and "accuracy" in table.inner_text()
            page.screenshot(path=str(shot), full_page=True)
            assert problems == []
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
