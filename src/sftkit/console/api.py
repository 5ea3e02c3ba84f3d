"""The console's JSON API (``/api/*``). Every route validates its input before it acts:
a refused request (4xx) creates no folder and starts no process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sftkit import __version__
from sftkit.console import configs, precheck, runs
from sftkit.console.chat import check_lengths, conversation, side_by_side
from sftkit.console.errors import bad_request, conflict, not_found
from sftkit.console.jobs import LAUNCH
from sftkit.core.config import RunConfig
from sftkit.core.configio import load_config
from sftkit.core.errors import ConfigError, ModelNotFound
from sftkit.core.rundir import RunDir
from sftkit.core.vocab import BUNDLED_ALIAS
from sftkit.hub.models import resolve
from sftkit.infer.engine import GenParams
from sftkit.train.methods import DEEPSPEED_PRESETS

router = APIRouter(prefix="/api")
MAX_FILES = 32


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _st(request: Request) -> Any:
    return request.app.state.console


# -- the page's setup ----------------------------------------------------------------------------


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    st = _st(request)
    return {"ok": True, "version": __version__, "runs_dir": str(st.ws.runs), "base_dir": str(st.ws.base),
            "token_required": st.token is not None}


@router.get("/config/schema")
def schema() -> dict[str, Any]:
    return configs.form_schema()


class FormBody(_Body):
    values: dict[str, str]


@router.post("/config/from_form")
def from_form(body: FormBody, request: Request) -> dict[str, Any]:
    """Form values -> the YAML they stand for, and the schema errors by key."""
    raw, errors = configs.values_to_raw(body.values, _st(request).ws)
    return {"yaml": configs.dump_yaml(raw), "errors": errors + configs.raw_errors(raw)}


class YamlBody(_Body):
    yaml: str = Field(max_length=200_000)


@router.post("/config/to_form")
def to_form(body: YamlBody, request: Request) -> dict[str, Any]:
    """YAML -> every form field's value (or the YAML's errors, file:line)."""
    try:
        cfg = configs.load_text(body.yaml, _st(request).ws)
    except ConfigError as e:
        return {"values": None, "errors": [{"key": None, "message": str(e)}]}
    return {"values": configs.config_to_values(cfg), "errors": []}


class CheckBody(YamlBody):
    estimate: bool = True


def _validated(text: str, st: Any) -> tuple[RunConfig, Path]:
    """The config as ``sft train`` reads it, its run folder, and every path checked to exist."""
    try:
        cfg = configs.load_text(text, st.ws)
    except ConfigError as e:
        raise bad_request(str(e), "yaml") from None
    run_dir = st.ws.run_dir(cfg.name, "name")
    _check_model(st.ws.model_ref(cfg.model.name_or_path, "model.name_or_path"))
    _check_files(cfg, st.ws)
    return cfg, run_dir


def _check_files(cfg: RunConfig, ws: Any) -> None:
    """Every file the run would read exists and is one the console may read (workspace.py):
    data, a template file, a DeepSpeed file."""

    for split in ("train", "val", "test"):
        for i, src in enumerate(getattr(cfg.data, split)):
            ws.existing_file(str(src.path), f"data.{split}.{i}")
    ws.template_ref(cfg.template, "template")
    if cfg.train.deepspeed and cfg.train.deepspeed not in DEEPSPEED_PRESETS:
        ws.existing_file(cfg.train.deepspeed, "train.deepspeed")


def _check_model(ref: str) -> None:
    """The model reference names a model on this machine (files only; nothing is loaded).
    The bundled alias is always there (its one-time conversion happens when training starts)."""

    if ref == BUNDLED_ALIAS:
        return
    try:
        resolve(ref)
    except (ModelNotFound, OSError, ValueError, KeyError) as e:
        raise bad_request(f"model.name_or_path: {e}", "model.name_or_path") from None


@router.post("/config/check")
def check_config(body: CheckBody, request: Request) -> dict[str, Any]:
    """What Start would run: the YAML, the command, notes, and the memory estimate."""
    st = _st(request)
    cfg, run_dir = _validated(body.yaml, st)
    out: dict[str, Any] = {
        "ok": True, "name": cfg.name, "run_dir": str(run_dir), "exists": run_dir.exists(),
        "run_yaml": configs.run_yaml(cfg, run_dir), "command": f"sft train {run_dir / LAUNCH}",
        "notes": configs.notes_for(body.yaml, cfg, run_dir),
    }
    if body.estimate:
        out["estimate"] = precheck.estimate(cfg)
    return out


@router.get("/files")
def files(request: Request, dir: str | None = None) -> dict[str, Any]:
    return _st(request).ws.listing(dir)


class DataFile(_Body):
    split: Literal["train", "val", "test"] = "train"
    path: str
    format: str | None = None


class DataCheckBody(_Body):
    files: list[DataFile] = Field(min_length=1, max_length=MAX_FILES)


@router.post("/data/check")
def data_check(body: DataCheckBody, request: Request) -> dict[str, Any]:
    ws = _st(request).ws
    checked = [(f.split, ws.existing_file(f.path, f"files.{i}.path"), f.format) for i, f in enumerate(body.files)]
    return precheck.check_files(checked)


class StatsBody(_Body):
    files: list[str] = Field(min_length=1, max_length=MAX_FILES)
    model: str
    template: str | None = None
    cutoff: int | None = Field(None, gt=0)


@router.post("/data/stats")
def data_stats(body: StatsBody, request: Request) -> dict[str, Any]:
    ws = _st(request).ws
    paths = [ws.existing_file(p, f"files.{i}") for i, p in enumerate(body.files)]
    template = ws.template_ref(body.template or None, "template")
    return precheck.length_stats(paths, ws.model_ref(body.model), template, body.cutoff)


# -- runs ----------------------------------------------------------------------------------------


@router.get("/runs")
def list_runs(request: Request) -> dict[str, Any]:
    st = _st(request)
    rows = [runs.summary(st.ws.runs / n, st.jobs) for n in st.ws.run_names()]
    rows.sort(key=lambda r: r["updated"], reverse=True)
    return {"runs": rows, "runs_dir": str(st.ws.runs)}


class StartBody(YamlBody):
    force: bool = False


def _steps(cfg: RunConfig, train: bool) -> list[str]:
    return [*(["train"] if train else []), *(["eval"] if cfg.data.test else []), "report"]


def _spec(cfg: RunConfig, cfg_file: Path, train: bool, **extra: Any) -> dict[str, Any]:
    """What the job runs. ``sft eval RUN`` compares a LoRA run with its base by switching the
    adapter off; a full or freeze run has no adapter, so its base model is named as --baseline."""
    whole_model = cfg.method.type.value in ("full", "freeze")
    return {"steps": _steps(cfg, train), "config": str(cfg_file), "forgetting": cfg.eval.forgetting_check,
            "baseline": cfg.model.name_or_path if whole_model else None, **extra}


@router.post("/runs", status_code=201)
def start_run(body: StartBody, request: Request) -> dict[str, Any]:
    """Create ``runs/<name>/`` with launch.yaml and start ``sft train`` (then eval and report)."""
    st = _st(request)
    cfg, run_dir = _validated(body.yaml, st)
    try:
        run_dir.mkdir(parents=False, exist_ok=False)
    except FileExistsError:
        raise conflict(f"a run named {cfg.name!r} already exists in {st.ws.runs}; choose another name "
                       "(or resume that run from its page)", "name") from None
    (run_dir / LAUNCH).write_text(configs.run_yaml(cfg, run_dir), encoding="utf-8")
    job = st.jobs.start(run_dir, _spec(cfg, run_dir / LAUNCH, train=True, force=body.force))
    return {"name": cfg.name, "run_dir": str(run_dir), "job": job}


@router.get("/runs/{name}")
def get_run(name: str, request: Request) -> dict[str, Any]:
    st = _st(request)
    return runs.detail(st.ws.existing_run(name), st.jobs)


@router.get("/runs/{name}/metrics")
def get_metrics(name: str, request: Request, offset: int = 0, digest: str | None = None) -> dict[str, Any]:
    run_dir = _st(request).ws.existing_run(name)
    return runs.metrics_since(run_dir, offset, digest)


@router.get("/runs/{name}/log")
def get_log(name: str, request: Request, offset: int = -1) -> dict[str, Any]:
    return runs.log_since(_st(request).ws.existing_run(name), offset)


class StopBody(_Body):
    force: bool = False


@router.post("/runs/{name}/stop")
def stop_run(name: str, body: StopBody, request: Request) -> dict[str, Any]:
    st = _st(request)
    return st.jobs.stop(st.ws.existing_run(name), force=body.force)


def _run_config(run_dir: Path) -> tuple[RunConfig, Path, list[str]]:
    """The config a run was trained with, and an output_dir override when it does not point here."""
    cfg_file = run_dir / LAUNCH if (run_dir / LAUNCH).is_file() else RunDir(run_dir).config
    try:
        cfg = load_config(cfg_file)
    except ConfigError as e:
        raise conflict(f"the run's config no longer validates: {e}", "config") from None
    same = cfg.run_dir().resolve() == run_dir
    return cfg, cfg_file, [] if same else [f"output_dir={run_dir}"]


class ResumeBody(_Body):
    force: bool = False


@router.post("/runs/{name}/resume")
def resume_run(name: str, body: ResumeBody, request: Request) -> dict[str, Any]:
    """``sft train CONFIG --resume`` from the last complete checkpoint (then eval and report)."""
    st = _st(request)
    run_dir = st.ws.existing_run(name)
    if st.jobs.alive(run_dir):
        raise conflict(f"run {name!r} is running")
    if (run_dir / "train_summary.json").is_file():
        raise conflict(f"run {name!r} finished training; there is nothing to resume")
    if runs.complete_checkpoint(run_dir) is None:
        raise conflict(f"run {name!r} has no complete checkpoint to resume from (set train.save_steps so "
                       "checkpoints are written during training)")
    cfg, cfg_file, overrides = _run_config(run_dir)
    spec = _spec(cfg, cfg_file, train=True, overrides=overrides, resume=True, force=body.force)
    return {"name": name, "job": st.jobs.start(run_dir, spec)}


@router.post("/runs/{name}/evaluate")
def evaluate_run(name: str, request: Request) -> dict[str, Any]:
    """``sft eval RUN`` (when the config has data.test) and ``sft report RUN``."""
    st = _st(request)
    run_dir = st.ws.existing_run(name)
    if st.jobs.alive(run_dir):
        raise conflict(f"run {name!r} is running")
    if not ((run_dir / "adapter").is_dir() or (run_dir / "model").is_dir()):
        raise conflict(f"run {name!r} has no trained adapter/ or model/ yet")
    cfg, cfg_file, _ = _run_config(run_dir)
    return {"name": name, "job": st.jobs.start(run_dir, _spec(cfg, cfg_file, train=False))}


@router.get("/runs/{name}/files/{filename}", response_model=None)
def run_file(name: str, filename: str, request: Request, download: bool = False) -> FileResponse:
    run_dir = _st(request).ws.existing_run(name)
    if filename not in runs.FILES:
        raise not_found(f"{filename!r} is not one of the run files the console serves: {', '.join(runs.FILES)}",
                        "filename")
    path = run_dir / filename
    if not path.is_file():
        raise not_found(f"run {name!r} has no {filename} (yet)", "filename")
    media = {".html": "text/html; charset=utf-8", ".yaml": "text/yaml; charset=utf-8",
             ".log": "text/plain; charset=utf-8", ".jsonl": "text/plain; charset=utf-8",
             ".json": "application/json", ".png": "image/png"}[path.suffix]
    return FileResponse(path, media_type=media, filename=f"{name}-{filename}" if download else None,
                        content_disposition_type="attachment" if download else "inline")


@router.get("/compare")
def compare(request: Request, run: Annotated[list[str] | None, Query()] = None) -> dict[str, Any]:
    st = _st(request)
    names = list(dict.fromkeys(run or []))
    if not 2 <= len(names) <= 8:
        raise bad_request("compare: give 2 to 8 different runs (?run=a&run=b)", "run")
    return runs.compare([st.ws.existing_run(n, "run") for n in names], st.jobs)


# -- chat ----------------------------------------------------------------------------------------


@router.get("/chat/targets")
def chat_targets(request: Request) -> dict[str, Any]:
    """Runs that have trained weights (adapter/ or model/)."""
    st = _st(request)
    rows = [runs.summary(st.ws.runs / n, st.jobs) for n in st.ws.run_names()]
    return {"runs": [{"name": r["name"], "model": r["model"], "method": r["method"], "status": r["status"]}
                     for r in rows if r["trained"]]}


class Turn(_Body):
    user: str
    model: str = ""
    baseline: str = ""


class ChatBody(_Body):
    run: str | None = None
    model: str | None = None
    baseline: str = "auto"
    system: str | None = Field(None, max_length=20_000)
    history: list[Turn] = Field(default_factory=list, max_length=100)
    prompt: str = Field(min_length=1, max_length=20_000)
    max_new_tokens: int = Field(128, ge=1, le=2048)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)


def _chat_refs(body: ChatBody, st: Any) -> tuple[str, str]:
    if (body.run is None) == (body.model is None):
        raise bad_request("chat: give exactly one of run (a run name) or model (a model reference)", "run")
    if body.run is not None:
        run_dir = st.ws.existing_run(body.run, "run")
        if not ((run_dir / "adapter").is_dir() or (run_dir / "model").is_dir()):
            raise conflict(f"run {body.run!r} has no trained weights yet (adapter/ or model/)", "run")
        ref = str(run_dir)
    else:
        ref = st.ws.model_ref(body.model or "", "model")
    base = body.baseline.strip() or "auto"
    if base not in ("auto", "none"):
        base = st.ws.model_ref(base, "baseline")
    return ref, base


@router.post("/chat", response_model=None)
def chat(body: ChatBody, request: Request) -> StreamingResponse:
    """Stream the model's and the baseline's answers to the same prompt (NDJSON)."""

    st = _st(request)
    ref, base = _chat_refs(body, st)
    sides = st.chat.sides(ref, base)
    history = [t.model_dump() for t in body.history]
    try:
        prompts = [s.engine.prompt_for(conversation(body.system, history, body.prompt, s.name)) for s in sides]
    except ValueError as e:  # TemplateError: e.g. a system prompt for a template without a system turn
        raise bad_request(f"the chat template cannot render this conversation: {e}", "system") from None
    check_lengths(sides, prompts, body.max_new_tokens)
    params = GenParams(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p)
    return StreamingResponse(side_by_side(st.chat, sides, prompts, params), media_type="application/x-ndjson")
