"""The fused LoRA layer (sftkit.train.fastlora) computes what peft's layer computes: with the same seed the
same dropout mask, the same loss and gradients (fp32: to rounding; bf16 autocast: to bf16 rounding), the
same training run; layers it cannot compute exactly keep peft's forward; copies and saved adapters behave."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from sftkit.train import fastlora  # noqa: E402
from sftkit.train.dropout import keep_lora_inputs_16bit, speed_up_lora_dropout  # noqa: E402


def _lora(tiny_model_dir, dropout=0.1, dtype=torch.float32, **extra):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                            task_type="CAUSAL_LM", **extra))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would hide every adapter gradient but B's
            torch.nn.init.normal_(p, std=0.05)
    speed_up_lora_dropout(model)
    keep_lora_inputs_16bit(model)
    return model.train()


def _step(model, autocast):
    ids = torch.randint(5, 1000, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)  # the dropout masks
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("dtype", "autocast", "tol"), [(torch.float32, False, 1e-5),
                                                        (torch.float32, True, 2e-2),
                                                        (torch.bfloat16, True, 2e-2)])
@pytest.mark.parametrize("dropout", [0.0, 0.05, 0.3])  # 0.05: dropped positions; 0.3: a keep mask
def test_same_loss_and_gradients_as_peft(tiny_model_dir, dtype, autocast, tol, dropout):
    peft_model = _lora(tiny_model_dir, dropout, dtype)
    fused = copy.deepcopy(peft_model)
    assert fastlora.install(fused) == 2 * 7  # 2 layers x q k v o gate up down
    assert all(type(m) is fastlora.FusedLinear for m in fused.modules() if hasattr(m, "lora_A"))
    ref_loss, ref_grads = _step(peft_model, autocast)
    loss, grads = _step(fused, autocast)
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 14
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item()
        assert (g - ref_grads[name]).abs().max().item() <= tol * max(scale, 1e-3), name


@pytest.mark.parametrize("dropout", [0.05, 0.2])
def test_gradient_checkpointing_redraws_the_same_masks(tiny_model_dir, dropout):
    """Recomputing a checkpointed layer draws its dropout mask again: torch's RNG state is restored, and the
    draws are seeded from it, so the gradients equal those of the run without checkpointing."""
    model = _lora(tiny_model_dir, dropout)
    fastlora.install(model)
    ref_loss, ref_grads = _step(model, False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    loss, grads = _step(model, False)
    torch.testing.assert_close(loss, ref_loss)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_dropout_is_dropout(tiny_model_dir):
    """Another seed gives other masks; eval mode drops nothing (equal to the dropout-free model)."""
    model = _lora(tiny_model_dir, 0.3)
    fastlora.install(model)
    a, _ = _step(model, False)
    torch.manual_seed(8)
    ids = torch.randint(5, 1000, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        b = model(input_ids=ids, labels=ids).loss
    assert a.item() != pytest.approx(b.item(), abs=1e-6)
    model.eval()
    undropped = _lora(tiny_model_dir, 0.0).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, undropped(input_ids=ids).logits)


def test_layers_that_are_not_plain_keep_peft_forward(tiny_model_dir):
    """Disabled or merged adapters, two active adapters and DoRA give peft's values through the fused class."""
    ids = torch.randint(5, 1000, (1, 12), generator=torch.Generator().manual_seed(2))

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids).logits

    model = _lora(tiny_model_dir, 0.0).eval()
    expected = logits(model)
    fastlora.install(model)
    torch.testing.assert_close(logits(model), expected)
    with model.disable_adapter():
        plain_base = logits(model)
    assert not torch.allclose(plain_base, expected)
    model.merge_adapter()
    torch.testing.assert_close(logits(model), expected, rtol=1e-4, atol=1e-4)
    model.unmerge_adapter()
    dora = _lora(tiny_model_dir, 0.0, use_dora=True).eval()
    want = logits(dora)
    fastlora.install(dora)
    torch.testing.assert_close(logits(dora), want)


def test_a_copy_is_independent_and_the_adapter_saves_as_peft_s(tiny_model_dir, tmp_path):
    from peft import PeftModel

    model = _lora(tiny_model_dir, 0.0).eval()
    fastlora.install(model)
    ids = torch.randint(5, 1000, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        twin = copy.deepcopy(model)
        for name, p in twin.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
        assert not torch.allclose(twin(input_ids=ids).logits, before)
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # the copy computes with its own weights
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, before)


def test_a_training_run_is_the_same_with_either_kernel(tmp_path, tiny_model_dir):
    """`sft train` with dropout, packing, gradient accumulation and a checkpoint: the fused layer's loss curve
    and saved adapter equal peft's (fp32, so to rounding), and the run records which kernel ran."""
    from safetensors.torch import load_file

    from sftkit.core.configio import load_config
    from sftkit.train.recipe import run
    from trainlib import curve, write_workdir

    cfg = write_workdir(tmp_path, tiny_model_dir, n_rows=20,
                        train="  max_steps: 4\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 2\n"
                              "  save_steps: 2\n  packing: true\n")
    over = ["method.type=lora", "method.dropout=0.1", "method.r=4"]
    runs = {k: run(load_config(cfg, [*over, f"train.lora_kernel={k}", f"output_dir={tmp_path / k}"]))
            for k in ("fused", "peft")}
    for kernel, res in runs.items():
        assert json.loads((res.run_dir / "train_summary.json").read_text())["plan"]["lora_kernel"] == kernel
    got, want = curve(runs["fused"].run_dir), curve(runs["peft"].run_dir)
    assert len(got) == 4 and got == want
    fused, ref = (load_file(str(runs[k].run_dir / "adapter" / "adapter_model.safetensors")) for k in ("fused", "peft"))
    assert fused.keys() == ref.keys() and len(fused) == 2 * 14
    assert max((fused[k] - ref[k]).abs().max().item() for k in fused) < 1e-5


@pytest.mark.parametrize("dropout", [0.05, 0.3])
def test_odd_inputs(dropout):
    """A non-contiguous 2-D input, an empty one, and a dropout that would keep nothing at 1/65,536: the fused
    function agrees with the plain formula and leaves its input alone; p ~ 1 takes peft's forward."""
    from sftkit.train.dropout import dropped_levels

    torch.manual_seed(0)
    w, a, b = torch.randn(6, 16), torch.randn(4, 16, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    x = torch.randn(16, 8).t().requires_grad_()  # [8, 16], not contiguous
    before = x.detach().clone()
    y = fastlora.FusedLoRA.apply(x, w, None, a, b, 2.0, dropped_levels(dropout), torch.float32)
    assert torch.equal(x.detach(), before)
    kept = (y - x.detach() @ w.t()).abs().sum() > 0
    assert kept and y.shape == (8, 6)
    y.sum().backward()
    assert x.grad.shape == (8, 16) and a.grad.shape == a.shape and b.grad.is_contiguous()
    empty = fastlora.FusedLoRA.apply(torch.randn(0, 16), w, None, a, b, 2.0, dropped_levels(dropout), torch.float32)
    assert empty.shape == (0, 6)


def test_dropout_near_one_takes_peft_forward(tiny_model_dir):
    model = _lora(tiny_model_dir, 0.0)
    fastlora.install(model)
    layer = next(m for m in model.modules() if type(m) is fastlora.FusedLinear)
    layer.lora_dropout["default"] = torch.nn.Dropout(1.0)  # drops everything: the adapter adds nothing
    layer.train()
    x = torch.randn(3, layer.in_features)
    torch.testing.assert_close(layer(x), layer.base_layer(x))
