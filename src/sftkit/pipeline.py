"""``sft run`` and ``sft demo``: the whole workflow of the seeds in one command.

data check -> baseline on the held-out test set -> training -> evaluation of the
tuned model against the base on the same prompts -> report.html -> one sample
answer before and after. Every step is a call into the module that owns it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sftkit.core.config import RunConfig
from sftkit.core.configio import load_config
from sftkit.core.errors import ConfigError, RunDirError, UsageError
from sftkit.core.results import HEADLINE, EvalResult
from sftkit.core.rundir import Overwrite, RunDir, State
from sftkit.data.kinds import load_any
from sftkit.evaluate.report import write_report
from sftkit.evaluate.table import comparison_table
from sftkit.hub.device import release_memory, resolve_device

DEMO_EXAMPLE = "api_assistant"


def examples_dir() -> Path:
    """The worked examples, shipped inside the package (``sftkit/examples/``; a source checkout
    also shows them as ``examples/``)."""
    return Path(str(resources.files("sftkit") / "examples"))


def example_names() -> list[str]:
    return sorted(p.name for p in examples_dir().iterdir() if (p / "config.yaml").is_file())


def resolve_example(ref: str) -> Path:
    """A config file, a folder holding config.yaml, or a shipped example's name (``api_assistant``,
    also written ``examples/api_assistant`` as in a source checkout)."""
    p = Path(ref)
    if p.is_file():
        return p
    if (p / "config.yaml").is_file():
        return p / "config.yaml"
    name = ref.removeprefix("examples/").strip("/")
    candidate = examples_dir() / name / "config.yaml"
    if candidate.is_file():
        return candidate
    raise UsageError(f"{ref}: not a config file, a folder with config.yaml, or an example name "
                     f"({', '.join(example_names())})")


def _check_data(cfg: RunConfig, console: Console) -> dict[str, Any]:

    table = Table(title="data check", show_edge=False)
    for col in ("split", "file", "format", "rows", "valid", "rejected"):
        table.add_column(col, justify="right" if col in ("rows", "valid", "rejected") else "left")
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        for src in getattr(cfg.data, split):
            res = load_any(src.path, format=src.format, columns=src.columns or None)
            out.setdefault(split, []).append({"file": str(src.path), "total": res.total, "rejected": res.rejected})
            table.add_row(split, src.path.name, res.format, str(res.total), str(res.valid), str(res.rejected))
    console.print(table)
    return out



def _check_folder(cfg: RunConfig, overwrite: Overwrite) -> None:
    """Refuse a folder training may not use before the first step, not after the baseline (reads only;
    training claims the folder). This command has no --resume: an earlier run is replaced or kept."""
    folder = RunDir(cfg.run_dir())
    try:
        folder.plan(cfg, None, overwrite)
    except RunDirError as e:
        if folder.state() not in (State.FINISHED, State.IN_PROGRESS):
            raise
        raise RunDirError(f"output_dir {folder.path} holds an earlier run ({folder.state().value}); nothing was "
                          "written. `sft run --overwrite` moves it aside and starts over, `sft train CONFIG "
                          "--resume` continues it, or set output_dir=... to a new folder") from e


def _baseline_first(cfg: RunConfig, test: str, console: Console) -> Any:
    """Step 2: the base model on the held-out set, before any training. Its scores are reused in the
    comparison (same weights, template, prompts and greedy decoding), so they are measured once."""
    from sftkit.evaluate import runner as E

    e = cfg.eval
    convs, _, pairs = E.load_eval(test, e.limit)
    side = E.load_sides(cfg.model.name_or_path, "none", batch_size=e.batch_size, template=cfg.template,
                        device=e.device)[0]
    console.print(f"baseline on {side.engine.device_info.describe() if side.engine.device_info else 'cpu'}")
    scored = E.run_side(side, convs, E.metric_names(e.metrics, convs), e.max_new_tokens, pairs)
    del side
    release_memory()  # the base model leaves the card before training loads its own copy
    scores = E.side_scores(scored)
    console.print(f"baseline on {len(convs)} test prompts: " + ", ".join(
        f"{k} {v:.3f}" for k, v in scores.items() if k in HEADLINE and isinstance(v, int | float)))
    return scored


def run_pipeline(
    config: Path, overrides: list[str] | None = None, console: Console | None = None,
    overwrite: Overwrite = Overwrite.NO,
) -> dict[str, Any]:
    """The whole workflow. ``overwrite``: what happens to an earlier run in the output folder when
    training starts (``sft demo`` deletes its own previous run; ``sft run --overwrite`` moves it aside).
    A folder training may not use is refused before the first step, not after the baseline."""
    from sftkit.evaluate.runner import evaluate
    from sftkit.train.recipe import run

    console = console or Console(stderr=True)
    cfg = load_config(config, overrides or [])
    if not cfg.data.test:
        raise ConfigError(f"{config}: data.test is empty; the before/after comparison needs a held-out test file")
    test = str(cfg.data.test[0].path)
    e = cfg.eval
    _check_folder(cfg, overwrite)
    resolve_device(e.device, what="eval.device")  # a GPU that is not there stops the run before step 1

    _train_parent(cfg, console)

    console.rule("[bold]1/5 data check")
    _check_data(cfg, console)

    console.rule("[bold]2/5 baseline: the starting model on the held-out test set")
    baseline = _baseline_first(cfg, test, console)

    method = "LoRA " if cfg.method.type.value in ("lora", "qlora") else ""
    console.rule(f"[bold]3/5 {method}training" + (f" (stage {cfg.stage.value})" if cfg.stage.value != "sft" else ""))
    trained = run(cfg, console=console, overwrite=overwrite)

    console.rule("[bold]4/5 tuned vs base on the same prompts")
    result = evaluate(str(trained.run_dir), test, None, e.metrics, e.max_new_tokens, e.limit,
                      batch_size=e.batch_size, forgetting=e.forgetting_check, done={"baseline": baseline},
                      device=e.device)
    console.print(comparison_table(result))
    flips = result.get("flips", [])
    up = sum(1 for f in flips if f.get("direction") == "wrong_to_right")
    console.print(f"flips: {up} wrong→right, {len(flips) - up} right→wrong")

    console.rule("[bold]5/5 report and a sample answer")
    report = write_report(trained.run_dir)
    sample = _sample(trained.run_dir, console)
    console.print(f"report: {report}")
    metric, before, after = EvalResult.model_validate(result).headline()
    return {
        "stage": cfg.stage.value,
        **_preference_summary(result),
        "sample": sample,
        # "accuracy" is the headline score whatever it is (the demo's contract); "metric" names it and
        # "score" says the same with honest keys
        "baseline": {"accuracy": before},
        "tuned": {"accuracy": after},
        "score": {"metric": metric, "baseline": before, "tuned": after},
        "train_seconds": round(trained.train_seconds, 1),
        "report": str(report),
        "run_dir": str(trained.run_dir),
        "primary_metric": result.get("primary"),
        "metric": metric,  # what "accuracy" holds: accuracy, or exact_match/rougeL/bleu for generative tasks
    }


def _sample(run_dir: Path, console: Console) -> dict[str, Any] | None:
    """One test prompt with its answer before and after (the first the tuning got right), printed and returned."""
    path = run_dir / "eval_predictions.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    row = next((r for r in rows if r.get("model_score") and not r.get("baseline_score")), rows[0] if rows else None)
    if row is None:
        return None
    console.print(f"[bold]prompt:[/]    {row['prompt']}")
    console.print(f"[bold]reference:[/] {row['reference']}")
    console.print(f"[bold]before:[/]    {row.get('baseline', '')!s}".rstrip())
    console.print(f"[bold]after:[/]     {row.get('model', '')!s}".rstrip())
    return {"prompt": row["prompt"], "reference": row["reference"], "before": row.get("baseline"),
            "after": row.get("model")}


def _preference_summary(result: dict[str, Any]) -> dict[str, Any]:
    """``--json``'s ``preference``: held-out preference accuracy before and after, and the reward."""
    pref = result.get("preference")
    if not pref:
        return {}
    keep = ("reward_accuracy", "reward_margin", "n", "beta")
    return {"preference": {"baseline": pref.get("baseline", {}).get("pref_accuracy"),
                           "tuned": pref.get("model", {}).get("pref_accuracy"),
                           **{k: pref[k] for k in keep if k in pref}}}


def _train_parent(cfg: RunConfig, console: Console) -> None:
    """A stage that builds on a run named by its config file (``model.name_or_path: sft.yaml``) gets
    that run trained first, unless it already is (an unfinished one is resumed)."""
    from sftkit.train.recipe import run

    ref = Path(cfg.model.name_or_path)
    if ref.suffix not in (".yaml", ".yml") or not ref.is_file():
        return
    parent = load_config(ref)
    if RunDir(parent.run_dir()).is_trained():
        console.print(f"parent stage: {parent.run_dir()} is trained ({ref.name})", soft_wrap=True)
        return
    console.rule(f"[bold]0/5 parent stage: {ref.name} (stage {parent.stage.value})")
    started = RunDir(parent.run_dir()).state() is not State.EMPTY  # an interrupted parent run is continued
    run(parent, resume="auto" if started else None, console=console)
