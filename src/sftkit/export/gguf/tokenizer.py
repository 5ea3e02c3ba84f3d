"""The tokenizer side of a GGUF: byte-level BPE vocabulary, merges, special and stop tokens, the
chat template an export folder carries."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from sftkit.core.conversation import Conversation
from sftkit.export.gguf.common import _PROBE_CHATS, CHKTXT, KNOWN_PRE, GGUFError
from sftkit.export.merge import TEMPLATE_FILE
from sftkit.templates.base import ChatTemplate
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.json_template import JSONTemplate

# -- the tokenizer -------------------------------------------------------------------------------


@dataclass(slots=True)
class TokenizerMeta:
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    ids: dict[str, int]  # bos, eos, unk, pad, eot, eom (those present)
    add_bos: bool
    chat_template: str | None
    stops: list[str]
    stop_ids: list[int]
    notes: list[str] = field(default_factory=list)


def _tokenizer_json(folder: Path) -> dict[str, Any]:
    p = folder / "tokenizer.json"
    if not p.is_file():
        kind = "SentencePiece (tokenizer.model only)" if (folder / "tokenizer.model").is_file() else "a slow tokenizer"
        raise GGUFError(f"{folder}: the tokenizer is {kind}, with no tokenizer.json; sftkit writes GGUF only for "
                        "byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM2): convert this model with llama.cpp's "
                        "convert_hf_to_gguf.py")
    return json.loads(p.read_text(encoding="utf-8"))


def check_tokenizer(folder: Path) -> dict[str, Any]:
    """tokenizer.json, if it is a byte-level BPE (GPT-2 style) tokenizer; refused by type otherwise."""
    tj = _tokenizer_json(folder)
    model = tj.get("model") or {}
    kind = model.get("type", "?")
    byte_level = "ByteLevel" in json.dumps(tj.get("decoder")) or "ByteLevel" in json.dumps(tj.get("pre_tokenizer"))
    if kind == "BPE" and model.get("byte_fallback"):
        kind = "SentencePiece-style BPE (byte_fallback, as Llama 2 / Mistral / TinyLlama)"
    elif kind == "BPE" and not byte_level:
        kind = "BPE without byte-level encoding"
    else:
        kind = "" if kind == "BPE" else kind
    if kind:
        raise GGUFError(f"{folder / 'tokenizer.json'}: the tokenizer is {kind}; sftkit writes GGUF only for "
                        "byte-level BPE tokenizers (GPT-2 style: Llama 3, Qwen2, SmolLM2): convert this model "
                        "with llama.cpp's convert_hf_to_gguf.py")
    return tj


def _token_types(tok: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    rev = {i: t for t, i in tok.get_vocab().items()}
    if len(rev) > vocab_size or max(rev) >= vocab_size:
        raise GGUFError(f"the tokenizer has ids up to {max(rev)} but config.json's vocab_size is {vocab_size}; "
                        "the embedding does not cover the tokenizer (resize the embeddings and export again)")
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        t = rev.get(i)
        if t is None:  # padded vocabulary (Qwen): llama.cpp's placeholder
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(t)
        if t not in added:
            types.append(gguf.TokenType.NORMAL)
        elif decoder[i].special or (t.startswith("<|") and t.endswith("|>")):
            # llama.cpp warns about, and cannot stop on, end-of-turn markers that are not CONTROL
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.USER_DEFINED)
    return tokens, [int(x) for x in types]


def _single_token(tok: Any, s: str) -> int | None:
    enc = tok(s, add_special_tokens=False)["input_ids"]
    return int(enc[0]) if len(enc) == 1 else None


def _special_ids(tok: Any, stops: list[str]) -> dict[str, int]:
    ids = {k: getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")}
    ids = {k: int(v) for k, v in ids.items() if v is not None}
    if "pad" not in ids and "eos" in ids:
        ids["pad"] = ids["eos"]
    singles = [i for i in (_single_token(tok, s) for s in stops) if i is not None]
    eot = next((i for i in singles if i != ids.get("eos")), None)
    if eot is not None:
        ids["eot"] = eot  # llama.cpp ends generation on eos, eot and eom
    eom = _single_token(tok, "<|eom_id|>") if "<|eom_id|>" in stops else None
    if eom is not None:
        ids["eom"] = eom
    return ids


def _pre_by_regex(tok: Any) -> str | None:
    """A vocabulary llama.cpp has no hash for, split with a regex it knows by name (a Qwen2 or Llama 3
    split, or GPT-2's byte-level one): that name. transformers maps the same names back to the same regex."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as splits
    except ImportError:  # another transformers layout: only the hash table is used
        splits = {}
    pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    patterns = [(p.get("pattern") or {}).get("Regex") for p in parts if p.get("type") == "Split"]
    if len(patterns) == 1:
        return next((name for name in ("llama-bpe", "qwen2") if splits.get(name) == patterns[0]), None)
    if len(parts) == 1 and pre.get("type") == "ByteLevel" and pre.get("use_regex"):
        return "gpt-2"
    return None


def tokenizer_meta(tj: dict[str, Any], tok: Any, vocab_size: int, ft: FolderTemplate) -> TokenizerMeta:
    chk = sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()
    pre = KNOWN_PRE.get(chk) or _pre_by_regex(tok) or "default"
    notes = [] if pre != "default" else [
        f"unknown pre-tokenizer (check hash {chk[:12]}…, split regex not one llama.cpp names): tokenizer.ggml.pre "
        "= 'default'; llama.cpp and transformers may split text differently from the original tokenizer"]
    tokens, types = _token_types(tok, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    probe = tok("hi")["input_ids"]
    add_bos = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
    return TokenizerMeta(pre, tokens, types, merges, _special_ids(tok, ft.stops), add_bos, ft.jinja, ft.stops,
                         ft.stop_ids, notes + ft.notes)


def _add_tokenizer(w: gguf.GGUFWriter, t: TokenizerMeta) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(t.pre)
    w.add_token_list(t.tokens)
    w.add_token_types(t.types)
    w.add_token_merges(t.merges)
    for k, v in t.ids.items():
        getattr(w, f"add_{k}_token_id")(v)
    w.add_add_bos_token(t.add_bos)
    w.add_add_space_prefix(False)
    if t.chat_template:
        w.add_chat_template(t.chat_template)
    # No GGUF key lists stop strings; Ollama's PARAMETER stop and sftkit read these.
    w.add_array("sftkit.stop_strings", t.stops)
    w.add_array("sftkit.stop_token_ids", t.stop_ids)


# -- the template and stops of an export folder -----------------------------------------------


@dataclass(slots=True)
class FolderTemplate:
    template: ChatTemplate | None  # what sftkit renders with (the JSON template, or the tokenizer's)
    jinja: str | None  # the chat_template for the GGUF (None: the tokenizer's Jinja is not the trained template)
    stops: list[str]
    stop_ids: list[int]
    notes: list[str]


def _generation_eos(folder: Path) -> list[int]:
    try:
        eos = json.loads((folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, json.JSONDecodeError):
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]


def _render(t: ChatTemplate, messages: list[dict[str, str]]) -> str:
    return "".join(s.text for s in t.segments(Conversation.from_messages(messages), add_generation_prompt=True))


def folder_template(folder: Path, tok: Any) -> FolderTemplate:
    """The template the export was trained with (``sftkit_template.json`` if present, else the
    tokenizer's), the Jinja to embed, and every stop: the template's stop strings, the tokenizer's
    eos and generation_config's eos ids (``sft export`` writes the template's end-of-turn ids there)."""
    hf = HFChatTemplate(tok) if getattr(tok, "chat_template", None) else None
    notes: list[str] = []
    template: ChatTemplate | None = hf
    if (folder / TEMPLATE_FILE).is_file():
        template = JSONTemplate.from_file(folder / TEMPLATE_FILE)
        if hf is None or any(_render(hf, c) != _render(template, c) for c in _PROBE_CHATS):
            hf = None  # the export could not express its JSON template in Jinja: embed none rather than a wrong one
            notes.append(f"the tokenizer's Jinja chat template does not render like {TEMPLATE_FILE}; the GGUF carries "
                         "no chat_template (use the Modelfile, or llama.cpp's --chat-template-file)")
    stops = list(template.stop_strings) if template is not None else []
    ids = set(_generation_eos(folder))
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    for s in stops:
        i = _single_token(tok, s)
        if i is not None:
            ids.add(i)
    texts = [tok.decode([i]) for i in sorted(ids)]  # a stop string is text, not a byte-level token spelling
    stops += [t for i, t in zip(sorted(ids), texts, strict=True) if t not in stops and _single_token(tok, t) == i]
    return FolderTemplate(template, tok.chat_template if hf is not None else None, stops, sorted(ids), notes)
