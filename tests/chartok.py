"""A character-level fake tokenizer, so label tests can be read by eye.

One token per character, except a few special strings which are one token
each. Offsets are exact character spans, like a fast HF tokenizer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "[gMASK]",
    "sop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)
_CHAR_BASE = 1000


class CharTokenizer:
    def __init__(
        self,
        specials: Sequence[str] = DEFAULT_SPECIALS,
        eos_token: str = "<|im_end|>",
        bos_token: str | None = None,
    ) -> None:
        # Longest first, so "<|im_end|>" is never read as "<" "|" ...
        self.specials = sorted(specials, key=len, reverse=True)
        self.vocab = {s: i for i, s in enumerate(specials)}
        self.inv = {i: s for s, i in self.vocab.items()}
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.chat_template = None

    @property
    def eos_token_id(self) -> int:
        return self.vocab[self.eos_token]

    @property
    def bos_token_id(self) -> int | None:
        return self.vocab[self.bos_token] if self.bos_token else None

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, offs, i = [], [], 0
        while i < len(text):
            sp = next((s for s in self.specials if text.startswith(s, i)), None)
            if sp is not None:
                ids.append(self.vocab[sp])
                offs.append((i, i + len(sp)))
                i += len(sp)
            else:
                ids.append(_CHAR_BASE + ord(text[i]))
                offs.append((i, i + 1))
                i += 1
        return ids, offs

    def __call__(
        self, texts: str | Sequence[str], add_special_tokens: bool = False, return_offsets_mapping: bool = False
    ) -> dict[str, Any]:
        single = isinstance(texts, str)
        encs = [self._encode(t) for t in ([texts] if single else texts)]  # type: ignore[list-item]
        out: dict[str, Any] = {"input_ids": [e[0] for e in encs]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e[1] for e in encs]
        if single:
            out = {k: v[0] for k, v in out.items()}
        return out

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.vocab.get(token)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.inv[i] if i < _CHAR_BASE else chr(i - _CHAR_BASE) for i in ids)

    def trained_text(self, labels: Sequence[int]) -> str:
        """The characters that carry loss, concatenated (IGNORE = -100 skipped)."""
        return self.decode([x for x in labels if x != -100])
