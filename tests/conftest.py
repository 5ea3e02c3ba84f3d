"""Shared fixtures: the bundled tokenizer and a tiny random Llama built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# tests stay hermetic: no prepared-data cache entries in the user's ~/.cache (test_prepared_cache turns it on)
os.environ.setdefault("SFTKIT_PREPARED_CACHE", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def bundled_path() -> Path:
    from sftkit.core.vocab import BUNDLED_ALIAS
    from sftkit.hub.models import resolve

    return resolve(BUNDLED_ALIAS).path


@pytest.fixture(scope="session")
def tokenizer(bundled_path):
    from sftkit.hub.models import load_tokenizer

    return load_tokenizer(bundled_path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, hidden-64 Llama with the bundled tokenizer, saved as a HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only the development workspace has ../shared/data)")
    return SHARED_DATA
