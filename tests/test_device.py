"""The one inference device rule (``sftkit.hub.device``): GPU-side decisions with faked CUDA / MPS
``Capabilities`` (the only fake: this machine has no GPU), the refusal through the real ``sft``
command, and models placed by it (base + adapter together, baseline and tuned sharing weights)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sftkit.core.errors import DeviceUnavailable, UsageError
from sftkit.hub.device import Capabilities, Card, InferenceDevice, resolve_device

GB = 1024**3
CPU = Capabilities(cuda=False, torch_version="2.13.0+cpu", cuda_build=None)
MAC = Capabilities(cuda=False, mps=True, torch_version="2.13.0")
H100 = Card(0, "NVIDIA H100", 80 * GB, 79 * GB, (9, 0), bf16=True)
T4 = Card(0, "Tesla T4", 16 * GB, 15 * GB, (7, 5), bf16=False)


def cuda(*cards: Card) -> Capabilities:
    return Capabilities(cuda=True, capability=cards[0].capability, bf16=cards[0].bf16, cards=cards,
                        torch_version="2.11.0", cuda_build="13.0")


def test_auto_is_cuda_then_mps_then_cpu():
    assert resolve_device("auto", cuda(H100)) == InferenceDevice("cuda:0", "bfloat16", note="NVIDIA H100")
    assert (resolve_device("auto", MAC).device, resolve_device("auto", MAC).dtype) == ("mps", "float16")
    assert (resolve_device("auto", CPU).device, resolve_device("auto", CPU).dtype) == ("cpu", "float32")
    assert resolve_device("cpu", cuda(H100)).device == "cpu"  # asked for: the GPU is left alone


def test_bf16_where_the_card_has_it_else_fp16():
    assert resolve_device("cuda", cuda(H100)).dtype == "bfloat16"
    assert resolve_device("cuda", cuda(T4)).dtype == "float16"
    assert resolve_device("cuda", cuda(T4), dtype="fp32").dtype == "float32"  # an explicit dtype wins
    with pytest.raises(DeviceUnavailable, match=r"Tesla T4.*no native bf16; use float16"):
        resolve_device("cuda", cuda(T4), dtype="bf16")


def test_a_model_larger_than_one_card_spreads_over_the_cards():
    small = [Card(i, "A10", 24 * GB, 22 * GB, (8, 6), bf16=True) for i in range(4)]
    seven_b, thirty_b = 7_000_000_000, 30_000_000_000
    fits = resolve_device("cuda", cuda(*small), model_params=seven_b)  # 14 GB of bf16 weights <= 0.8 x 22 GB
    assert (fits.device, fits.device_map, fits.fits) == ("cuda:0", None, True)
    spread = resolve_device("auto", cuda(*small), model_params=thirty_b)  # 60 GB: no single card holds it
    assert (spread.device, spread.device_map, spread.dtype) == ("cuda:0", "auto", "bfloat16")
    assert "spread over 4 cards" in spread.note
    alone = resolve_device("cuda", cuda(small[0]), model_params=thirty_b)  # one card: nowhere to spread to
    assert (alone.device_map, alone.fits) == (None, False)
    pinned = resolve_device("cuda:2", cuda(*small), model_params=thirty_b)  # pinned stays pinned
    assert (pinned.device, pinned.device_map, pinned.fits) == ("cuda:2", None, False)
    mixed = resolve_device("auto", cuda(small[0], Card(1, "T4", 16 * GB, 15 * GB, (7, 5))), model_params=thirty_b)
    assert (mixed.device_map, mixed.dtype) == ("auto", "float16")  # the dtype every card computes


def test_cuda_picks_the_card_with_the_most_free_memory():
    busy = Card(0, "H100", 80 * GB, 3 * GB, (9, 0), bf16=True)
    idle = Card(1, "H100", 80 * GB, 79 * GB, (9, 0), bf16=True)
    assert resolve_device("cuda", cuda(busy, idle)).device == "cuda:1"
    assert resolve_device("cuda:0", cuda(busy, idle)).device == "cuda:0"


def test_refusals_name_what_was_found():
    with pytest.raises(DeviceUnavailable) as e:
        resolve_device("cuda", CPU)
    assert str(e.value) == ("--device cuda: no CUDA GPU found (PyTorch 2.13.0+cpu is a CPU-only build, and there "
                            "is no Apple MPS either); use --device auto or --device cpu")
    with pytest.raises(DeviceUnavailable, match=r"built for CUDA 12.4 but sees no GPU"):
        resolve_device("cuda", Capabilities(cuda=False, torch_version="2.11.0", cuda_build="12.4"))
    with pytest.raises(DeviceUnavailable, match="but Apple MPS is available"):
        resolve_device("cuda:0", MAC)
    with pytest.raises(DeviceUnavailable, match=r"has 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2", cuda(H100, Card(1, "H100", bf16=True)))
    with pytest.raises(DeviceUnavailable, match="no Apple MPS device"):
        resolve_device("mps", cuda(H100))
    for bad in ("gpu", "cpu:1", "mps:0", "cuda:x"):
        with pytest.raises(UsageError, match="use auto, cpu, cuda, cuda:N or mps"):
            resolve_device(bad, CPU)
    with pytest.raises(UsageError, match="dtype"):
        resolve_device("auto", CPU, dtype="int8")


def test_weight_params_reads_the_safetensors_headers(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from sftkit.hub.models import weight_params

    assert weight_params(tiny_model_dir) == AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()


@pytest.fixture
def adapter(tmp_path, tiny_model_dir):
    """A LoRA adapter with non-zero weights, so adapter on and off answer differently."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_base_and_adapter_land_on_the_resolved_device(adapter):
    from sftkit.hub.models import inference_device, load_model, resolve

    resolved = resolve(adapter)
    dev = inference_device(resolved, "cpu", dtype="bf16")
    model = load_model(resolved, device=dev)
    devices = {p.device for p in model.parameters()}
    assert devices == {torch.device("cpu")}
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base} == {torch.bfloat16}
    assert any("lora_" in n for n, _ in model.named_parameters())


def test_baseline_and_tuned_share_one_copy_of_the_weights(adapter):
    from sftkit.evaluate.runner import load_sides
    from sftkit.infer.engine import GenParams

    tuned, baseline = load_sides(str(adapter), None, device="auto")
    assert baseline.engine is tuned.engine  # one model: the baseline is the adapter switched off
    assert tuned.engine.device_info is not None and tuned.engine.device_info.device == "cpu"  # auto, no GPU here
    params = GenParams(max_new_tokens=6)
    with tuned.mode():
        on = tuned.engine.generate(["Hello there"], params)[0].token_ids
    with baseline.mode():
        off = baseline.engine.generate(["Hello there"], params)[0].token_ids
    assert on != off


def _sft(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sftkit.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cli_refuses_a_missing_gpu_in_one_sentence(tiny_model_dir, tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}\n')
    for args in (["chat", str(tiny_model_dir), "--prompt", "hi", "--device", "cuda"],
                 ["eval", str(tiny_model_dir), "--data", str(data), "--device", "cuda:1"],
                 ["serve", str(tiny_model_dir), "--device", "cuda"],
                 ["run", "api_assistant", "--device", "cuda"]):
        r = _sft(*args)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2, (args, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: --device cuda"), (args, r.stderr)
        assert "no CUDA GPU found (PyTorch" in lines[0] and lines[0].count(". ") == 0, lines[0]


def test_cli_auto_never_fails_for_lack_of_a_gpu(tiny_model_dir):
    r = _sft("chat", str(tiny_model_dir), "--prompt", "hi", "--max-new-tokens", "3", "--device", "auto")
    assert r.returncode == 0, r.stderr
