"""``sft serve --engine vllm``: the ``vllm serve`` command line for a model or run folder.

sftkit hands the port over to vLLM (``os.execvp``): a LoRA run is served as its base model plus
the adapter (``--enable-lora --lora-modules``), a full run from its ``model/`` folder, and a run
trained with a JSON template gets that template as Jinja (``--chat-template``), written outside
the run folder.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

from sftkit.core.errors import UsageError
from sftkit.core.rundir import RunDir
from sftkit.hub.models import resolve, served_name
from sftkit.templates.json_template import JSONTemplate
from sftkit.templates.registry import load_template
from sftkit.templates.to_jinja import json_to_jinja


def vllm_available() -> bool:

    return importlib.util.find_spec("vllm") is not None


def vllm_command(ref: str, host: str, port: int, api_key: str | None, max_batch: int,
                 template_dir: Path | None = None) -> list[str]:
    """The ``vllm serve`` command line for a model folder, an exported folder, or a
    run folder (base + ``--lora-modules``, or the full-FT ``model/``). A run trained
    with a JSON template gets it as a Jinja ``--chat-template`` file in ``template_dir``."""


    p = Path(ref)
    name = served_name(ref)
    run = p if RunDir(p).is_trained() else None
    extra: list[str] = []
    if run is not None and (run / "adapter").is_dir():
        resolved = resolve(ref)
        if resolved.merged:
            raise UsageError(f"{ref} trains an adapter on top of a merged parent adapter (method.merge_base), "
                             f"which vLLM cannot stack: `sft export {ref} --out DIR` and serve DIR")
        model = str(resolved.path)
        rank = json.loads((run / "adapter" / "adapter_config.json").read_text()).get("r", 16)
        extra += ["--enable-lora", "--lora-modules", f"{name}={resolved.adapter}", "--max-lora-rank", str(rank)]
        served = [resolved.path.name]  # the base is served too; clients ask for `name` to get the adapter
    elif run is not None:
        model, served = str((run / "model").resolve()), [name]
    else:
        model, served = str(resolve(ref).path), [name]
    if run is not None:
        extra += _vllm_template(run, RunDir(run).template(), template_dir)
    if shutil.which("vllm"):
        cmd = ["vllm", "serve", model]
    else:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    cmd += ["--host", host, "--port", str(port), "--served-model-name", *served, "--max-num-seqs", str(max_batch)]
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd + extra


def _vllm_template(run: Path, template: str | None, where: Path | None) -> list[str]:
    if template is None:
        return []  # the tokenizer's own template: vLLM reads it from the folder
    if template.endswith((".jinja", ".j2")):
        return ["--chat-template", str(Path(template).resolve())]


    tpl = load_template(template)
    if not isinstance(tpl, JSONTemplate):
        return []
    # Written outside the run folder: serving must not modify the user's run.
    where = where or Path(tempfile.mkdtemp(prefix="sftkit-vllm-"))
    out = where / f"{run.name}.chat_template.jinja"
    out.write_text(json_to_jinja(tpl), encoding="utf-8")
    return ["--chat-template", str(out)]
