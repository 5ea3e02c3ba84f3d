"""One place that imports the heavy modules (transformers, peft, torch), once, under a lock.

transformers' lazy top-level module is not safe to import from two threads at once (measured
here: ``from transformers import TrainerCallback`` in one thread while another imports
``AutoTokenizer`` raises ImportError). The server answers requests on a thread pool, so every
console path that reaches transformers calls ``ensure()`` first; the first caller imports and
resolves everything the console uses, the others wait for it.
"""

from __future__ import annotations

import importlib
import threading

_lock = threading.Lock()
_ready = threading.Event()
_ATTRS = ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "GenerationConfig", "TrainerCallback",
          "DynamicCache", "LlamaConfig")
_MODULES = ("peft", "sftkit.train.callbacks", "sftkit.infer.engine", "sftkit.evaluate.runner", "sftkit.estimate",
            "sftkit.data.stats",
            "sftkit.templates.registry", "sftkit.templates.hf")


def ensure() -> None:
    if _ready.is_set():
        return
    with _lock:
        if _ready.is_set():
            return
        import transformers

        for name in _ATTRS:
            getattr(transformers, name)
        for module in _MODULES:
            importlib.import_module(module)
        _ready.set()
