"""Score validation prompts by generation during training (``eval.generate_every``).

Loss alone does not say whether a checkpoint *answers* well; this logs the task
metric (accuracy, BLEU/ROUGE, ...) next to the loss in ``metrics.jsonl`` so the best
checkpoint can be picked by what matters. It uses the shared generation engine on
the model being trained, greedy, so numbers are comparable across steps: on the training
device, with the adapter live, and in the training's mixed precision (``train.bf16`` /
``train.fp16`` autocast), so a GPU run does not generate in fp32.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sftkit.core.conversation import Conversation
from sftkit.evaluate import metrics as M
from sftkit.infer.engine import Engine, GenParams


class GenerationEval(TrainerCallback):
    def __init__(self, renderer: Any, convs: list[Conversation], metrics: list[str] | None, every: int,
                 max_new_tokens: int, path: Path) -> None:

        self.renderer = renderer
        self.convs = [c for c in convs if c.final_reply() is not None]
        self.refs = [c.final_reply() or "" for c in self.convs]
        self.names = [M.canonical(n) for n in metrics] if metrics else M.infer_metrics(self.refs)
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.path = path

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if not self.convs or state.global_step % self.every or not state.is_world_process_zero:
            return
        import torch

        was_training = model.training
        model.eval()
        try:
            engine = Engine(model, self.renderer.tokenizer, self.renderer)  # wherever training put the model
            prompts = [engine.prompt_for(c) for c in self.convs]
            with torch.no_grad(), _mixed_precision(args, engine.input_device()):
                results = engine.generate(prompts, GenParams(max_new_tokens=self.max_new_tokens))
        finally:
            if was_training:
                model.train()
        scores = M.compute(self.names, [r.text for r in results], self.refs).scores
        row = {"step": state.global_step, **{f"gen_{k}": round(v, 5) for k, v in scores.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _mixed_precision(args: Any, device: Any) -> contextlib.AbstractContextManager[Any]:
    """The autocast training runs under (``args.bf16`` / ``args.fp16``), on the model's device."""
    import torch

    amp = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else None
    if amp is None or device.type not in ("cuda", "cpu", "mps"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)
