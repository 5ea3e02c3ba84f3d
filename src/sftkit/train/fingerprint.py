"""What a run was trained on, so a resume can refuse to mix two different runs.

The fingerprint holds hashes of the data files, the template's rendering of a probe
conversation, the tokenizer, the model reference and the config (minus keys that may
legitimately change on resume, such as ``train.max_steps``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkit.core.config import RunConfig
from sftkit.core.conversation import Conversation, Message
from sftkit.core.digest import flatten_keys, json_digest
from sftkit.data.load import source_hash

# Keys that may change between a run and its resumption without changing what is trained.
_RESUMABLE_KEYS = {"output_dir", "name"}
_RESUMABLE_TRAIN = {"max_steps", "num_train_epochs", "logging_steps", "save_steps", "eval_steps",
                    "save_total_limit", "report_to", "dataloader_num_workers", "early_stopping_patience"}


def fingerprint(cfg: RunConfig, renderer: Any, model_path: Path,
                parent: dict[str, Any] | None = None) -> dict[str, Any]:
    """``parent``: the run this one builds on (``lineage``): retrained, it is another starting point."""
    probe = Conversation([Message("system", "s"), Message("user", "u 你好"), Message("assistant", "a")])
    raw = cfg.model_dump(mode="json")
    for k in _RESUMABLE_KEYS:
        raw.pop(k, None)
    for k in _RESUMABLE_TRAIN:
        raw["train"].pop(k, None)
    tok = renderer.tokenizer
    return {
        "data": {str(s.path): source_hash(s.path) for s in [*cfg.data.train, *cfg.data.val]},
        "template": json_digest([renderer.template.name, renderer.render(probe).text]),
        "tokenizer": json_digest([len(tok), tok.eos_token, tok.bos_token, tok.pad_token]),
        "model": json_digest([cfg.model.name_or_path, str(model_path.name)]),
        "config": json_digest(raw),
        "config_values": flatten_keys(raw),  # so a refusal can name the key that changed
        **({"parent": json_digest([parent.get(k) for k in ("config_digest", "global_step", "how")])}
           if parent else {}),
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable reasons why ``new`` is not the run ``old`` describes."""
    out = []
    for key in ("template", "tokenizer", "model", "parent"):
        if old.get(key) != new.get(key):
            out.append(f"the {key} changed")
    if old.get("config") != new.get("config"):
        was, now = old.get("config_values"), new.get("config_values") or {}
        changed = sorted(k for k in set(was or {}) | set(now) if (was or {}).get(k) != now.get(k)) if was else []
        out += [f"config {k} changed ({was.get(k)!r} -> {now.get(k)!r})" for k in changed] or ["the config changed"]
    old_data, new_data = old.get("data", {}), new.get("data", {})
    for path in sorted(set(old_data) | set(new_data)):
        if old_data.get(path) != new_data.get(path):
            out.append(f"data file {path} changed" if path in old_data and path in new_data
                       else f"data file {path} {'added' if path in new_data else 'removed'}")
    return out
