"""``export_gguf``: a run or model folder -> a verified GGUF (and an Ollama Modelfile), refusing early
what cannot work."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.core.errors import GgufNotWritten, RefusedPath, VerificationFailed
from sftkit.core.safepaths import write_text_atomic
from sftkit.export import ollama
from sftkit.export.gguf.common import LLAMA_QUANTIZE, GGUFError, Log, check_qtype, find_quantizer
from sftkit.export.gguf.model import read_model
from sftkit.export.gguf.tokenizer import check_tokenizer, folder_template
from sftkit.export.gguf.verify import verify_gguf
from sftkit.export.gguf.writer import WriteInfo, write_gguf
from sftkit.export.merge import TEMPLATE_FILE, ExportResult, export_run, read_run
from sftkit.hub.models import load_tokenizer

# -- export ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class GGUFResult:
    path: Path  # the verified GGUF, or <name>.unverified.gguf
    ok: bool
    qtype: str
    hf_folder: Path
    verification: dict[str, Any]
    verification_file: Path
    modelfile: Path | None = None
    ollama_command: str | None = None
    notes: list[str] = field(default_factory=list)
    export: ExportResult | None = None  # the Hugging Face export, when ``src`` was a run folder


def _paths(out_dir: Path, stem: str, qtype: str) -> tuple[Path, Path, Path]:
    base = f"{stem}-{qtype}"
    return out_dir / f"{base}.gguf", out_dir / f"{base}.unverified.gguf", out_dir / f"{base}.verification.json"


def _check_targets(out_dir: Path, stem: str, qtype: str, force: bool) -> None:
    """An existing GGUF is replaced only with ``force``, and only if sftkit wrote it (its
    verification record is beside it)."""
    target, unverified, record = _paths(out_dir, stem, qtype)
    ours = record.is_file() and not record.is_symlink()
    for p in (target, unverified, record):
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise RefusedPath(f"{p} is not a regular file; it was left unchanged: choose another output folder")
        if p.exists() and not ours:
            raise RefusedPath(f"{p} exists and sftkit did not write it (no {record.name} beside it); it was left "
                              "unchanged: move it away or choose another output folder")
        if p.exists() and not force:
            raise RefusedPath(f"{p} exists (an earlier sft export); pass --force to replace it")


def preflight(src: Path, qtype: str, ollama_name: str | None = None) -> tuple[str, str | None]:
    """Every refusal that needs no conversion: the type, llama-quantize for a k-quant, the Ollama
    name, the architecture, rope and tokenizer. Returns ``(qtype, llama-quantize path or None)``."""
    qtype = check_qtype(qtype)
    quantizer = find_quantizer() if qtype in LLAMA_QUANTIZE else None
    if ollama_name:
        ollama.check_name(ollama_name)
    precheck(Path(src))
    return qtype, quantizer


def precheck(src: Path) -> None:
    """Refuse an architecture, rope or tokenizer the writer cannot handle before any merge is spent:
    for a run folder, on its base model (LoRA) or trained model (full) and the run's tokenizer."""
    if (src / "config.yaml").is_file():
        info = read_run(src)
        weights = info.weights if info.kind == "full" else info.base
        tok = info.weights if (info.weights / "tokenizer.json").is_file() else info.base
    elif (src / "config.json").is_file():
        weights = tok = src
    else:
        raise GGUFError(f"{src}: neither a run folder (config.yaml) nor a Hugging Face model folder (config.json)")
    read_model(weights)
    check_tokenizer(tok)


def _hf_folder(src: Path, out_dir: Path, force: bool, dtype: str | None,
               log: Log, device: str = "auto") -> tuple[Path, ExportResult | None]:
    """The Hugging Face folder to convert: ``src`` itself, or the verified export of run ``src`` into ``out_dir``."""
    if not (src / "config.yaml").is_file():
        return src, None
    res = export_run(src, out_dir, dtype=dtype, force=force, log=log, device=device)
    if not res.ok:
        raise VerificationFailed(f"the Hugging Face export of {src} failed verification (kept as {res.out}); "
                                 "no GGUF was written")
    return res.out, res


@contextmanager
def _removing(*paths: Path) -> Iterator[None]:
    try:
        yield
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


def _llama_quantize(binary: str, src: Path, dst: Path, qtype: str, log: Log) -> None:
    cmd = [binary, str(src), str(dst), LLAMA_QUANTIZE[qtype]]
    log("running " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not dst.is_file():
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-3:] or ["no output"]
        raise GGUFError(f"llama-quantize failed (exit {proc.returncode}): {' | '.join(tail)}")


def _write_verified(folder: Path, tmp: Path, qtype: str, name: str, log: Log) -> tuple[WriteInfo, dict[str, Any]]:
    info = write_gguf(folder, tmp, qtype, name=name, log=log)
    log(f"wrote {qtype} GGUF ({info.bytes / 1e6:.1f} MB, {info.seconds:.1f} s); verifying ...")
    return info, verify_gguf(folder, tmp, qtype, log=log)


def _convert(folder: Path, tmp: Path, stem: str, qtype: str, quantizer: str | None,
             log: Log) -> tuple[WriteInfo, dict[str, Any]]:
    """Write (and for k-quants, quantise) ``tmp``, and verify it."""
    if quantizer is None:
        return _write_verified(folder, tmp, qtype, stem, log)
    f16 = tmp.with_name(tmp.name.replace(f"-{qtype}.", "-f16."))
    with _removing(f16):
        info, source = _write_verified(folder, f16, "f16", stem, log)
        if not source["ok"]:  # kept under the k-quant's unverified name, said so in its record
            f16.rename(tmp)
            return info, {**source, "note": "this is the f16 source for llama-quantize, which failed verification; "
                                            "llama-quantize was not run"}
        _llama_quantize(quantizer, f16, tmp, qtype, log)
    rec = verify_gguf(folder, tmp, qtype, log=log)
    rec["source_f16"] = {k: source[k] for k in ("exactness", "quality", "ok")}
    rec["ok"] = rec["ok"] and source["ok"]
    return info, rec


def _modelfile(folder: Path, gguf_name: str, name: str) -> ollama.Modelfile:
    tok = load_tokenizer(folder)
    ft = folder_template(folder, tok)
    if ft.template is None:
        raise ollama.ModelfileError(f"{folder}: no chat template (neither {TEMPLATE_FILE} nor a tokenizer "
                                    "chat_template), so there is no TEMPLATE for the Modelfile")
    add_bos = bool(tok.bos_token_id is not None and tok("hi")["input_ids"][:1] == [tok.bos_token_id])
    return ollama.modelfile(gguf_name, ft.template, ft.stops, add_bos=add_bos, name=name)


def _failed_checks(rec: dict[str, Any]) -> list[str]:
    parts = {"exactness": rec["exactness"].get("ok", True), "quality": rec["quality"]["ok"],
             "config": rec["config"]["same"], "tokenizer": rec["tokenizer"]["ok"], "metadata": rec["metadata"]["ok"]}
    return [k for k, ok in parts.items() if not ok] + (["f16 source"] if not rec.get("source_f16", {"ok": 1})["ok"]
                                                       else [])


def _export(folder: Path, out_dir: Path, stem: str, qtype: str, quantizer: str | None, ollama_name: str | None,
            force: bool, log: Log) -> GGUFResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_targets(out_dir, stem, qtype, force)  # again: a run's export may have replaced out_dir
    target, unverified, record = _paths(out_dir, stem, qtype)
    mf = _modelfile(folder, target.name, ollama_name) if ollama_name else None  # refused before the conversion
    if mf is not None:
        ollama.check_writable(out_dir / "Modelfile")
    tmp = out_dir / f".{stem}-{qtype}.{os.getpid()}.partial.gguf"
    with _removing(tmp):  # (after the rename below there is nothing left to remove)
        info, rec = _convert(folder, tmp, stem, qtype, quantizer, log)
        final = target if rec["ok"] else unverified
        for p in (target, unverified):
            p.unlink(missing_ok=True)
        os.replace(tmp, final)
    rec.update(gguf=final.name, write_seconds=info.seconds, tensor_types=info.tensor_types, notes=info.notes)
    res = GGUFResult(final, rec["ok"], qtype, folder, rec, record, notes=list(info.notes))
    if mf is not None and rec["ok"]:
        res.modelfile = ollama.write(out_dir / "Modelfile", mf)
        res.ollama_command = ollama.create_command(ollama_name or "", res.modelfile)
        res.notes += mf.notes
        rec["modelfile_notes"] = mf.notes
    write_text_atomic(record, json.dumps(rec, indent=2, ensure_ascii=False) + "\n")
    return res


def export_gguf(src: Path, out_dir: Path, qtype: str, ollama_name: str | None = None, *, force: bool = False,
                dtype: str | None = None, log: Log = print, device: str = "auto") -> GGUFResult:
    """``sft export SRC --out OUT_DIR --gguf QTYPE [--ollama NAME]``.

    ``src``: a run folder (exported first, verified, into ``out_dir`` as ``sft export`` does) or a
    Hugging Face model folder. Writes ``<stem>-<qtype>.gguf`` and ``<stem>-<qtype>.verification.json``
    into ``out_dir`` (``<stem>``: the exported folder's name), and with ``ollama_name`` a ``Modelfile``
    beside them. Refusals (type, llama-quantize, Ollama name, architecture, tokenizer, existing
    files) come before any work. A file that fails verification is kept as
    ``<stem>-<qtype>.unverified.gguf`` and ``VerificationFailed`` (exit 1) names the failed checks;
    a GGUF problem after a run's folder was exported is ``GgufNotWritten`` (exit 3)."""
    src, out_dir = Path(src), Path(out_dir)
    qtype, quantizer = preflight(src, qtype, ollama_name)
    is_run = (src / "config.yaml").is_file()
    stem = (out_dir if is_run else src).resolve().name
    if out_dir.is_dir():
        _check_targets(out_dir, stem, qtype, force)
    folder, exported = _hf_folder(src, out_dir, force, dtype, log, device)  # the GGUF checks run on the CPU
    try:
        res = _export(folder, out_dir, stem, qtype, quantizer, ollama_name, force, log)
        res.export = exported
    except (GGUFError, ollama.ModelfileError, RefusedPath) as e:
        if not is_run:
            raise
        raise GgufNotWritten(f"{folder} was exported and verified, but no GGUF was written: {e}") from e
    if not res.ok:
        raise VerificationFailed(
            f"{res.path}: the GGUF failed verification ({', '.join(_failed_checks(res.verification))}); the numbers "
            f"are in {res.verification_file}. The file is kept aside as unverified; please report it with that JSON")
    return res
