"""wandb and swanlab log online for a user logged in their own way (`wandb login` / `swanlab login`
write netrc files), offline otherwise, and training says which. Each test gets a fake HOME (and
working folder) holding the files those logins write, in the formats wandb 0.31 and swanlab 0.10
write them (read from their source). Nothing goes online: only the decision and what setup() hands
to the trackers are checked."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from sftkit.train import tracking
from sftkit.train.tracking import swanlab_mode, wandb_mode

VARS = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "WANDB_DIR", "WANDB_PROJECT", "NETRC",
        "SWANLAB_MODE", "SWANLAB_API_KEY", "SWANLAB_API_HOST", "SWANLAB_ROOT", "SWANLAB_SAVE_DIR")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty HOME and working folder; every tracker variable unset (and restored afterwards,
    including the ones setup() sets)."""
    h = tmp_path / "home"
    (h / "work").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.chdir(h / "work")
    for var in VARS:
        monkeypatch.setenv(var, "x")  # recorded, so that the teardown restores it
        monkeypatch.delenv(var)
    return h


def netrc(path: Path, machine: str, login: str, password: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"machine {machine}\n  login {login}\n  password {password}\n", encoding="utf-8")
    path.chmod(0o600)


def env() -> dict[str, str]:
    return dict(os.environ)


def test_wandb_logged_in_by_netrc_is_online(home):
    netrc(home / ".netrc", "api.wandb.ai", "user", "k" * 40)
    m = wandb_mode(env(), home)
    assert m.mode == "online" and str(home / ".netrc") in m.why and "api.wandb.ai" in m.why
    pytest.importorskip("wandb")
    said: list[str] = []
    report_to, _ = tracking.setup(["wandb"], home / "run", "r", say=said.append)
    assert report_to == ["wandb"] and "WANDB_MODE" not in env()  # not forced offline
    assert said == [f"wandb: logging online (logged in by `wandb login`: {home / '.netrc'}, machine api.wandb.ai)"]


def test_wandb_not_logged_in_is_offline_and_says_how_to_log_in(home):
    netrc(home / ".netrc", "github.com", "me", "token")  # a netrc with other machines only
    m = wandb_mode(env(), home)
    assert m.mode == "offline" and "`wandb login`" in m.why
    pytest.importorskip("wandb")
    said: list[str] = []
    tracking.setup(["wandb"], home / "run", "r", say=said.append)
    assert env()["WANDB_MODE"] == "offline"
    assert said[0].startswith(f"wandb: logging offline into {home / 'run' / 'wandb'} (not logged in")


def test_wandb_self_hosted_server_netrc_file_and_settings(home, monkeypatch):
    settings = home / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nbase_url = https://wandb.corp.example\n", encoding="utf-8")
    netrc(home / ".netrc", "api.wandb.ai", "user", "k" * 40)
    assert wandb_mode(env(), home).mode == "offline"  # logged in to the cloud, but the server is the corp one
    netrc(home / "elsewhere" / "netrc", "wandb.corp.example", "user", "k" * 40)
    monkeypatch.setenv("NETRC", str(home / "elsewhere" / "netrc"))
    assert wandb_mode(env(), home).mode == "online"
    # `wandb offline` wins over a login; WANDB_MODE wins over everything
    settings.write_text("[default]\nbase_url = https://wandb.corp.example\nmode = offline\n", encoding="utf-8")
    assert wandb_mode(env(), home).mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode(env(), home).why == "WANDB_MODE=online is set"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(env(), home).mode == "disabled"


def test_wandb_api_key_variable_and_unreadable_netrc(home, monkeypatch):
    (home / ".netrc").write_text("machine\n", encoding="utf-8")  # broken
    m = wandb_mode(env(), home)
    assert m.mode == "offline" and "could not be read" in m.why
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode(env(), home).mode == "online"


def test_swanlab_global_project_and_root_logins(home, monkeypatch):
    assert swanlab_mode(env(), home, Path.cwd()).mode == "offline"
    netrc(home / ".swanlab" / ".netrc", "https://api.swanlab.cn", "https://swanlab.cn", "s" * 21)
    m = swanlab_mode(env(), home, Path.cwd())
    assert m.mode == "online" and "https://api.swanlab.cn" in m.why
    # SWANLAB_API_HOST pointing elsewhere: that login is not for this host
    monkeypatch.setenv("SWANLAB_API_HOST", "https://swanlab.corp.example")
    m = swanlab_mode(env(), home, Path.cwd())
    assert m.mode == "offline" and "SWANLAB_API_HOST" in m.why
    # a project login (./.swanlab/.netrc) comes first
    netrc(Path.cwd() / ".swanlab" / ".netrc", "https://swanlab.corp.example/api", "https://swanlab.corp.example",
          "p" * 21)
    assert swanlab_mode(env(), home, Path.cwd()).mode == "online"
    monkeypatch.delenv("SWANLAB_API_HOST")
    (Path.cwd() / ".swanlab" / ".netrc").unlink()
    (home / ".swanlab" / ".netrc").unlink()
    netrc(home / "sw" / ".netrc", "https://api.swanlab.cn", "https://swanlab.cn", "s" * 21)
    monkeypatch.setenv("SWANLAB_ROOT", str(home / "sw"))
    assert swanlab_mode(env(), home, Path.cwd()).mode == "online"
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    assert swanlab_mode(env(), home, Path.cwd()).why == "SWANLAB_MODE=offline is set"


def test_swanlab_callback_gets_the_mode(home):
    if importlib.util.find_spec("swanlab") is None:
        pytest.skip("swanlab not installed")
    said: list[str] = []
    _, (offline,) = tracking.setup(["swanlab"], home / "run", "r", say=said.append)
    assert offline._init_kwargs["mode"] == "offline" and "offline into" in said[0]
    netrc(home / ".swanlab" / ".netrc", "https://api.swanlab.cn", "https://swanlab.cn", "s" * 21)
    _, (online,) = tracking.setup(["swanlab"], home / "run", "r", say=said.append)
    assert "mode" not in online._init_kwargs  # swanlab uses its own login
    assert said[1].startswith("swanlab: logging online (logged in by `swanlab login`")
