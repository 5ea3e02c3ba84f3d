"""``sft eval --engine vllm``: generation through vLLM behind the ``Engine`` interface.

The prompts are the same token ids the built-in engine decodes (same template,
same end-of-turn stops, greedy), so scores are comparable between engines. A run
is evaluated against its base model with one ``vllm.LLM``: the adapter is a
``LoRARequest`` on the model side and absent on the baseline side. Loss and
perplexity need the transformers model and are not computed with this engine.
Untested without a GPU (tests drive it with a stand-in for ``vllm.LLM``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sftkit.infer.engine import Engine, GenParams, GenResult

_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class VllmEngine(Engine):
    """``generate`` through a ``vllm.LLM``; ``model`` is None (no loss computation)."""

    def __init__(self, llm: Any, tokenizer: Any, renderer: Any, sampling_params: Any,
                 lora_request: Any = None, batch_size: int = 16) -> None:
        super().__init__(None, tokenizer, renderer, batch_size)
        self.llm, self.sampling_params, self.lora_request = llm, sampling_params, lora_request

    def sampling(self, params: GenParams) -> Any:
        return self.sampling_params(
            max_tokens=params.max_new_tokens,
            temperature=max(params.temperature, 0.0),  # 0: greedy in vLLM too
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            repetition_penalty=params.repetition_penalty,
            stop=list(dict.fromkeys([*self.stop_strings, *params.stop])),
            stop_token_ids=sorted(self.stop_ids),
            seed=params.seed,
        )

    def generate(self, prompts: Sequence[str], params: GenParams | None = None) -> list[GenResult]:
        params = params or GenParams()
        encoded = [self._encode(p) for p in prompts]
        t0 = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], self.sampling(params),
                                 lora_request=self.lora_request, use_tqdm=False)
        wall = time.perf_counter() - t0  # vLLM batches the requests itself: per-request time is the batch's
        results = []
        for ids, out in zip(encoded, outs, strict=True):
            c = out.outputs[0]
            results.append(GenResult(text=c.text, token_ids=list(c.token_ids),
                                     finish_reason="stop" if c.finish_reason == "stop" else "length",
                                     prompt_tokens=len(ids), completion_tokens=len(c.token_ids),
                                     first_token_s=wall, total_s=wall))
        return results

    def stream(self, prompt: str, params: GenParams | None = None) -> Any:
        raise NotImplementedError("streaming with vLLM is `sft serve --engine vllm`")


def lora_rank(adapter: Any) -> int:
    r = int(json.loads((adapter / "adapter_config.json").read_text()).get("r", 16))
    return next((x for x in _LORA_RANKS if x >= r), r)
