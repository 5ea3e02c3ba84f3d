"""Memory per device for one training setup, term by term (bytes).

Every term follows from how PyTorch autograd, the HF Trainer, peft and DeepSpeed
keep tensors alive; docs/estimate.md explains each and bench/RESULTS_estimate.md
checks the sum against measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftkit.estimate.shape import LINEARS, ModelShape

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# NF4 with double quantisation: 4 bits per weight, one 8-bit absmax per 64-weight block,
# one fp32 constant per 256 blocks (QLoRA paper, section 2).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
OPTIM_STATES = {"adamw": 2, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 1, "adafactor": 0}
FULL_METHODS = ("full", "freeze")


@dataclass(frozen=True, slots=True)
class Setup:
    """What is trained and how; defaults are sftkit's (LoRA r=8 on every projection, AdamW)."""

    method: str = "lora"  # full | lora | qlora | freeze
    seq_len: int = 1024
    micro_batch: int = 1
    grad_accum: int = 1
    gpus: int = 1
    weight_dtype: str = "bfloat16"  # dtype the base weights are loaded in
    autocast: str | None = None  # "bf16" / "fp16": mixed-precision compute over the loaded weights
    master_copy: bool = False  # fp32 master weights + fp32 Adam states for 16-bit weights (DeepSpeed, Megatron)
    optim: str = "adamw"  # adamw | adamw_8bit | paged_adamw_8bit | sgd | adafactor
    gradient_checkpointing: bool = False
    zero: int = 0  # DeepSpeed ZeRO stage 0-3
    offload: bool = False  # ZeRO CPU offload (optimizer states; with stage 3 also the weights)
    lora_r: int = 8
    lora_targets: tuple[str, ...] = LINEARS
    lora_dropout: float = 0.05
    freeze_layers: int = 2
    flash_attention: bool = True  # sdpa/flash: no seq x seq score matrix is kept
    device: str = "cuda"  # cuda | cpu
    overhead_bytes: float = 0.75 * GB  # CUDA context, or the measured CPU process baseline

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch (what activations scale with)."""
        return self.seq_len * self.micro_batch


def _lora_inputs(shape: ModelShape, targets: tuple[str, ...]) -> int:
    return sum(d_in for name, (d_in, _) in shape.linear_dims().items() if name in targets)


def lora_params(shape: ModelShape, setup: Setup) -> int:
    """r x (in + out) per adapted projection per layer."""
    dims = shape.linear_dims()
    return shape.layers * sum(setup.lora_r * (dims[t][0] + dims[t][1]) for t in setup.lora_targets if t in dims)


def trainable_params(shape: ModelShape, setup: Setup) -> int:
    if setup.method == "full":
        return shape.n_params
    if setup.method == "freeze":
        return min(setup.freeze_layers, shape.layers) * shape.layer_params
    return lora_params(shape, setup)


def _bytes(setup: Setup) -> tuple[int, int]:
    """(residual-stream bytes, matmul-output bytes).

    The residual stream keeps the embeddings' dtype: fp32 for QLoRA because peft's
    prepare_model_for_kbit_training upcasts every non-4-bit weight to fp32.
    """
    rb = 4 if setup.method == "qlora" else DTYPE_BYTES[setup.weight_dtype]
    ab = 2 if (setup.autocast or setup.method == "qlora") else rb
    return rb, ab


def layer_activation_bytes(shape: ModelShape, setup: Setup, trainable_layer: bool | None = None) -> float:
    """Bytes autograd keeps per token for one decoder layer (no checkpointing).

    A tensor counts when backward needs it: inputs of trainable matmuls, RMSNorm inputs
    (and their normalised fp32 value when the norm weight trains), rotary q/k (promoted
    to the residual dtype by the cos/sin tables), SDPA's v and output, the gated MLP's
    gate/silu/up (and its product when down_proj trains), and for LoRA the dropout noise
    plus the dropped input that lora_A keeps (its 16-bit cast under autocast).
    """
    h, i, q, kv = shape.hidden, shape.intermediate, shape.q_dim, shape.kv_dim
    rb, ab = _bytes(setup)
    full = setup.method in FULL_METHODS if trainable_layer is None else trainable_layer
    norms = 2 * (rb * h + (4 * h if full else 0) + (ab * h if full else 0))
    attn = rb * (q + kv) + ab * kv + ab * q + (ab * (q + kv) if rb != ab else 0)
    if not setup.flash_attention:  # eager attention keeps softmax probs (fp32) and their 16-bit copy per head
        attn += shape.heads * setup.seq_len * (4 + ab)
    mlp = (3 + (1 if full else 0)) * ab * i
    lora = 0.0
    if setup.method in ("lora", "qlora"):
        d = _lora_inputs(shape, setup.lora_targets)
        kept = ab if setup.autocast or setup.method == "qlora" else 4  # adapters are fp32 (peft upcasts them)
        lora = d * ((4 + kept) if setup.lora_dropout > 0 else (kept if kept != rb else 0))
        lora += len(setup.lora_targets) * setup.lora_r * ab
    return norms + attn + mlp + lora


def activation_bytes(shape: ModelShape, setup: Setup) -> float:
    """All decoder layers for one micro-batch; with checkpointing, each layer's input plus one layer recomputed."""
    rb, _ = _bytes(setup)
    t = setup.tokens
    per_layer = layer_activation_bytes(shape, setup)
    if setup.method == "freeze":  # frozen lower layers keep nothing: no gradient flows into them
        k = min(setup.freeze_layers, shape.layers)
        if setup.gradient_checkpointing:
            return t * (k * rb * shape.hidden + per_layer)
        return t * k * per_layer
    if setup.gradient_checkpointing:
        return t * (shape.layers * rb * shape.hidden + per_layer)
    return t * shape.layers * per_layer


def logits_loss_bytes(shape: ModelShape, setup: Setup) -> float:
    """Head and loss: the fp32 log-softmax output is kept, and backward makes two more
    vocab-sized fp32 buffers (nll grad, log-softmax grad) while it is alive; 16-bit
    logits add their own gradient. Also the final norm's input."""
    rb, ab = _bytes(setup)
    per_token = shape.vocab * (12 + (ab if ab != 4 else 0)) + shape.hidden * (rb + 4 + ab)
    return setup.tokens * per_token


def autocast_copy_bytes(shape: ModelShape, setup: Setup) -> float:
    """Autocast casts fp32 weights to 16 bits once per forward and autograd keeps the
    casts for backward: a 16-bit copy of every projection and the head (one layer's with
    checkpointing, whose recomputation casts again)."""
    if not setup.autocast or DTYPE_BYTES[setup.weight_dtype] == 2 or setup.method == "qlora":
        return 0.0
    layers = 1 if setup.gradient_checkpointing else shape.layers
    return 2 * (layers * shape.linear_params_per_layer + shape.vocab * shape.hidden)


def weight_bytes(shape: ModelShape, setup: Setup) -> float:
    if setup.method == "qlora":  # projections in NF4; embeddings, head and norms upcast to fp32 by peft
        quantised = shape.layers * shape.linear_params_per_layer
        return quantised * NF4_BYTES + (shape.n_params - quantised) * 4
    return shape.n_params * DTYPE_BYTES[setup.weight_dtype]


def param_state_bytes(shape: ModelShape, setup: Setup) -> dict[str, float]:
    """Weights, LoRA adapters, gradients, master copy and optimizer states (before sharding)."""
    n = trainable_params(shape, setup)
    lora = setup.method in ("lora", "qlora")
    pb = 4 if lora else DTYPE_BYTES[setup.weight_dtype]  # peft keeps adapters in fp32
    master = setup.master_copy and pb == 2
    state_b = 1 if "8bit" in setup.optim else (4 if master else pb)  # torch AdamW states take the param's dtype
    return {
        "weights": weight_bytes(shape, setup),
        "lora_adapters": n * 4 if lora else 0.0,
        "gradients": n * pb,
        "master_weights": n * 4 if master else 0.0,
        "optimizer_states": n * state_b * OPTIM_STATES.get(setup.optim, 2),
        # torch's foreach AdamW materialises sqrt(v) for all params at once during step();
        # the master-copy recipes (DeepSpeed, fused Adam) update in place
        "optimizer_step_temp": n * state_b if setup.optim == "adamw" and not master else 0.0,
    }


# What each term of the breakdown is, in one line (the estimate's table and the console show it).
EXPLAIN = {
    "weights": "base weights as loaded (NF4 + constants for QLoRA; peft upcasts embeddings/norms to fp32)",
    "lora_adapters": "LoRA A/B matrices, fp32",
    "gradients": "one gradient per trainable weight",
    "master_weights": "fp32 master copy of 16-bit trainable weights (mixed precision / DeepSpeed)",
    "optimizer_states": "AdamW m and v (8-bit optimizers: 1 byte each)",
    "optimizer_step_temp": "foreach AdamW's sqrt(v) buffer during step()",
    "activations": "what autograd keeps per decoder layer x layers x micro-batch tokens",
    "autocast_weight_copies": "16-bit casts of fp32 weights that autograd keeps until backward",
    "logits_loss": "fp32 log-softmax of batch x seq x vocab and its two gradients",
    "not_simultaneous": "terms above that are never alive at the same moment (grads vs activations)",
    "allocator_retention": "CPU: freed blocks glibc malloc keeps (measured once)",
    "framework_overhead": "CUDA context, or the torch/transformers process baseline on CPU",
}
