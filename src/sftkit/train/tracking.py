"""Experiment trackers for ``train.report_to``, all able to work with no network.

tensorboard, wandb and mlflow go through transformers' own integrations; swanlab
through its ``SwanLabCallback`` (its ``report_to`` path fails offline with "No active
Run").

wandb and swanlab log online when the user is logged in the tracker's own way, offline into
the run folder otherwise, and the run says which (``TrackerMode.line``). Logged in means, in
the order each tracker itself looks:

* wandb: ``WANDB_MODE`` when set (offline/dryrun, disabled, online); ``WANDB_API_KEY``; a ``mode``
  of offline/disabled in wandb's settings file (``$WANDB_CONFIG_DIR/settings``, else
  ``~/.config/wandb/settings``: what ``wandb offline`` writes); else the API key ``wandb login``
  stored in the netrc file (``$NETRC``, else ``~/.netrc``, else ``~/_netrc``) for the server
  (``WANDB_BASE_URL``, else the settings file's ``base_url``, else W&B's cloud).
* swanlab: ``SWANLAB_MODE`` when set; ``SWANLAB_API_KEY``; else the key ``swanlab login`` stored in
  ``./.swanlab/.netrc`` (a project login), else ``$SWANLAB_ROOT/.netrc`` (or ``$SWANLAB_SAVE_DIR``,
  else ``~/.swanlab/.netrc``), for the host ``SWANLAB_API_HOST`` names when it is set.
"""

from __future__ import annotations

import configparser
import importlib.util
import netrc
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sftkit.core.errors import MethodUnavailable
from sftkit.core.vocab import TRACKERS

_WANDB_CLOUD = ("api.wandb.ai", "api.forge.coreweave.com", "forge.coreweave.com")  # W&B's cloud, old and new names


@dataclass(frozen=True, slots=True)
class TrackerMode:
    """How a tracker will log, and why (what was found, or what to do to log online)."""

    name: str
    mode: str  # "online", "offline" or "disabled"
    why: str

    def line(self, run_dir: Path) -> str:
        where = {"wandb": "wandb", "swanlab": "swanlab"}.get(self.name, self.name)
        if self.mode == "offline":
            return f"{self.name}: logging offline into {run_dir / where} ({self.why})"
        return f"{self.name}: logging {self.mode} ({self.why})"


def _explicit(name: str, value: str) -> TrackerMode:
    v = value.strip().lower()
    mode = "offline" if v in ("offline", "dryrun", "local") else "disabled" if v == "disabled" else "online"
    return TrackerMode(name, mode, f"{name.upper()}_MODE={value} is set")


def _netrc_entries(path: Path) -> dict[str, str] | str:
    """``{machine: password}`` of a netrc file, or why it could not be read."""
    try:
        hosts = netrc.netrc(str(path)).hosts
    except FileNotFoundError:
        return {}
    except (netrc.NetrcParseError, OSError) as e:
        return f"{path} could not be read ({e})"
    return {machine: creds[2] for machine, creds in hosts.items() if creds[2]}


def _netrc_path(env: Mapping[str, str], home: Path) -> Path:
    if env.get("NETRC"):
        return Path(env["NETRC"]).expanduser()
    return home / "_netrc" if not (home / ".netrc").exists() and (home / "_netrc").exists() else home / ".netrc"


def _host(url: str) -> str:
    return urlsplit(url if "://" in url else f"https://{url}").netloc


def _wandb_settings(env: Mapping[str, str], home: Path) -> dict[str, str]:
    folder = Path(env["WANDB_CONFIG_DIR"]).expanduser() if env.get("WANDB_CONFIG_DIR") else home / ".config" / "wandb"
    parser = configparser.ConfigParser()
    try:
        parser.read(folder / "settings", encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def wandb_mode(env: Mapping[str, str], home: Path) -> TrackerMode:
    if env.get("WANDB_MODE"):
        return _explicit("wandb", env["WANDB_MODE"])
    if env.get("WANDB_API_KEY"):
        return TrackerMode("wandb", "online", "WANDB_API_KEY is set")
    settings = _wandb_settings(env, home)
    if settings.get("mode", "").lower() in ("offline", "dryrun", "disabled"):
        mode = "disabled" if settings["mode"].lower() == "disabled" else "offline"
        return TrackerMode("wandb", mode, f"wandb's settings file says mode = {settings['mode']} (`wandb online` "
                                          "turns it back)")
    base = env.get("WANDB_BASE_URL") or settings.get("base_url")
    hosts = [_host(base)] if base else list(_WANDB_CLOUD)
    if hosts[0] in _WANDB_CLOUD:
        hosts = list(dict.fromkeys([*hosts, *_WANDB_CLOUD]))
    path = _netrc_path(env, home)
    entries = _netrc_entries(path)
    if isinstance(entries, str):
        return TrackerMode("wandb", "offline", f"not logged in: {entries}")
    found = next((h for h in hosts if h in entries), None)
    if found:
        return TrackerMode("wandb", "online", f"logged in by `wandb login`: {path}, machine {found}")
    return TrackerMode("wandb", "offline", f"not logged in to {hosts[0]}: run `wandb login` to log online; "
                                           "upload this run later with `wandb sync`")


def _swanlab_host(machine: str) -> str:
    return _host(machine.removesuffix("/api")).lower()


def swanlab_mode(env: Mapping[str, str], home: Path, cwd: Path) -> TrackerMode:
    if env.get("SWANLAB_MODE"):
        return _explicit("swanlab", env["SWANLAB_MODE"])
    if env.get("SWANLAB_API_KEY"):
        return TrackerMode("swanlab", "online", "SWANLAB_API_KEY is set")
    root = env.get("SWANLAB_ROOT") or env.get("SWANLAB_SAVE_DIR")
    want = _swanlab_host(env["SWANLAB_API_HOST"]) if env.get("SWANLAB_API_HOST") else None
    for path in (cwd / ".swanlab" / ".netrc", (Path(root).expanduser() if root else home / ".swanlab") / ".netrc"):
        entries = _netrc_entries(path)
        if isinstance(entries, str):
            return TrackerMode("swanlab", "offline", f"not logged in: {entries}")
        if entries:  # swanlab keeps one login: the first machine is the one it uses
            machine = next(iter(entries))
            if want is None or _swanlab_host(machine) == want:
                return TrackerMode("swanlab", "online", f"logged in by `swanlab login`: {path}, host {machine}")
            return TrackerMode("swanlab", "offline", f"the `swanlab login` in {path} is for {machine}, not "
                                                     f"SWANLAB_API_HOST={env['SWANLAB_API_HOST']}: log in there")
    return TrackerMode("swanlab", "offline", "not logged in: run `swanlab login` to log online; upload this run "
                                             "later with `swanlab sync`")


def modes(names: list[str], env: Mapping[str, str] | None = None, home: Path | None = None,
          cwd: Path | None = None) -> list[TrackerMode]:
    """How each of ``names`` that can log online will log (wandb, swanlab)."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    cwd = Path.cwd() if cwd is None else cwd
    out = []
    for name in names:
        if name == "wandb":
            out.append(wandb_mode(env, home))
        elif name == "swanlab":
            out.append(swanlab_mode(env, home, cwd))
    return out


def setup(names: list[str], run_dir: Path, run_name: str,
          say: Callable[[str], Any] | None = None) -> tuple[list[str], list[Any]]:
    """Return (``report_to`` for TrainingArguments, extra callbacks). Checks packages first;
    ``say`` receives one line per tracker that can log online, saying how it will log."""
    unknown = [n for n in names if n not in TRACKERS and n != "none"]
    if unknown:
        raise MethodUnavailable(f"train.report_to: unknown tracker(s) {unknown}; choose from {', '.join(TRACKERS)}")
    names = [n for n in names if n != "none"]
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n]) is None]
    if missing:
        raise MethodUnavailable(f"train.report_to {missing}: not installed; `pip install 'sftkit-llm[track]'` "
                                f"(or `pip install {' '.join(TRACKERS[n] for n in missing)}`)")
    found = {m.name: m for m in modes(names)}
    for m in found.values():
        if say is not None:
            say(m.line(run_dir))
    report_to: list[str] = []
    callbacks: list[Any] = []
    for name in names:
        if name == "swanlab":
            callbacks.append(_swanlab(run_dir, run_name, found["swanlab"]))
            continue
        if name == "wandb":
            os.environ.setdefault("WANDB_DIR", str(run_dir))
            if found["wandb"].mode == "offline":
                os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_PROJECT", "sftkit")
        if name == "tensorboard":
            os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
        if name == "mlflow":
            os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
        report_to.append(name)
    return report_to, callbacks


def _swanlab(run_dir: Path, run_name: str, mode: TrackerMode) -> Any:
    from swanlab.integration.transformers import SwanLabCallback

    # None lets swanlab use its own login and SWANLAB_MODE (its online mode is "cloud" in older releases)
    own = mode.mode == "online" or bool(os.environ.get("SWANLAB_MODE"))
    return SwanLabCallback(project="sftkit", experiment_name=run_name, log_dir=str(run_dir / "swanlab"),
                           mode=None if own else mode.mode)
