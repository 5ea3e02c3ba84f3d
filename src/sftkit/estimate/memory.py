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
OPTIM_STATES = {"adamw": 2, "adamw_fused": 2, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 1, "adafactor": 0}
# One chunk of the chunked head: fp32 logits of at most 256 MiB, ~2.5 such buffers alive at once
# (sftkit.train.losshead.CHUNK_LOGIT_BYTES).
CHUNK_BYTES = 2.5 * 256 * 2**20
FULL_METHODS = ("full", "freeze")


@dataclass(frozen=True, slots=True)
class Setup:
    """What is trained and how; defaults are sftkit's (LoRA r=8 on every projection, AdamW, chunked loss head)."""

    method: str = "lora"  # full | lora | qlora | freeze
    seq_len: int = 1024
    micro_batch: int = 1
    grad_accum: int = 1
    gpus: int = 1
    weight_dtype: str = "bfloat16"  # dtype the base weights are loaded in (QLoRA: its non-4-bit weights)
    autocast: str | None = None  # "bf16" / "fp16": mixed-precision compute over the loaded weights
    master_copy: bool = False  # fp32 master weights + fp32 Adam states for 16-bit weights (DeepSpeed, Megatron)
    optim: str = "adamw"  # adamw | adamw_fused | adamw_8bit | paged_adamw_8bit | sgd | adafactor
    gradient_checkpointing: bool = False
    zero: int = 0  # DeepSpeed ZeRO stage 0-3
    offload: bool = False  # ZeRO CPU offload (optimizer states; with stage 3 also the weights)
    lora_r: int = 8
    lora_targets: tuple[str, ...] = LINEARS
    lora_dropout: float = 0.05
    freeze_layers: int = 2
    flash_attention: bool = True  # sdpa/flash: no seq x seq score matrix is kept (False: eager)
    mask_bias: bool = False  # sdpa with a [seq x seq] mask (packed rows on a GPU): the bias is kept per layer
    block_attention: bool = False  # sftkit_segments: on a CPU each segment's probabilities are kept (blockattn)
    loss_head: str = "chunked"  # plain (full logits) | chunked (sftkit.train.losshead) | liger (fused)
    liger: bool = False  # train.use_liger_kernel: Liger's RMSNorm, SwiGLU, RoPE and fused head
    trained_fraction: float = 1.0  # share of tokens with a label (the chunked head only sees those)
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


def _bytes(setup: Setup) -> tuple[int, int, int, int]:
    """(residual, attention, MLP, LoRA-input) bytes per element.

    The residual stream keeps the dtype of the non-4-bit weights (embeddings, norms); under autocast the
    attention and MLP activations are 16-bit, except QLoRA's MLP: bitsandbytes returns a 4-bit layer's
    output in its input's dtype, so with fp32 embeddings (peft's old upcast, or model.dtype float32) the
    gate, SiLU and up activations are fp32. LoRA A keeps its input as autocast's 16-bit cast, else as
    peft's fp32 cast.
    """
    rb = DTYPE_BYTES[setup.weight_dtype]
    ab = 2 if setup.autocast else rb
    mb = rb if setup.method == "qlora" else ab
    kept = 2 if setup.autocast else 4
    return rb, ab, mb, kept


def _norms(shape: ModelShape, setup: Setup, full: bool) -> float:
    """Both RMSNorms and, when the projections train, their saved (autocast-cast) inputs.

    HF RMSNorm keeps its fp32 input; Liger's keeps the input in its own dtype and the 1/rms per token.
    A trained norm weight also keeps the normalised value. Under autocast every projection casts its fp32
    input separately (q, k, v: three copies; gate, up: two), and a trained projection keeps its cast."""
    h = shape.hidden
    rb, ab, _, _ = _bytes(setup)
    one = (rb * h + 4) if setup.liger else (4 * h + 4)
    if not full:
        return 2 * one
    copies = 5 if rb != ab else 2  # projections reading the two norms' outputs
    normalised = 0 if setup.liger else rb * h  # Liger's backward recomputes it from the input and 1/rms
    return 2 * (one + normalised) + copies * ab * h


def layer_activation_bytes(shape: ModelShape, setup: Setup, trainable_layer: bool | None = None) -> float:
    """Bytes autograd keeps per token for one decoder layer (no checkpointing).

    Checked against ``torch.autograd.graph.saved_tensors_hooks`` byte counts of a real decoder layer
    (tests/test_estimate_gpu.py; bench/RESULTS_estimate.md): the norms (``_norms``), the attention kernel's
    q, k, v, output and log-sum-exp (+ the o_proj input when it trains; + a [seq x seq] bias per token for
    sdpa with a mask; eager keeps the probabilities; sftkit's CPU block attention keeps each block's
    probabilities instead of the log-sum-exp), the gated MLP's gate, SiLU output and up (Liger's
    SwiGLU recomputes the SiLU; + their product when down_proj trains), and for LoRA per adapted
    projection what the dropout keeps (``dropout_kept_bytes``), A's input and B's input.
    """
    i, q, kv = shape.intermediate, shape.q_dim, shape.kv_dim
    rb, ab, mb, kept = _bytes(setup)
    full = setup.method in FULL_METHODS if trainable_layer is None else trainable_layer
    # transformers repeats grouped kv heads itself when sdpa gets a mask (sdpa's own GQA needs none)
    kv_kept = q if setup.mask_bias else kv
    attn = ab * (2 * q + 2 * kv_kept) + 4 * shape.heads + (ab * q if full else 0)
    if setup.mask_bias:
        attn += ab * setup.seq_len
    if setup.block_attention and setup.device == "cpu":  # a whole row as one segment: the worst case
        probs = block_attention_bytes(shape.heads, setup.seq_len, ab)
        if probs:  # it keeps the probabilities instead of the log-sum-exp
            attn += probs / setup.seq_len - 4 * shape.heads
    if not setup.flash_attention:  # eager attention keeps softmax probs (fp32) and their 16-bit copy per head
        attn += shape.heads * setup.seq_len * (4 + ab)
    mlp = ((2 if setup.liger else 3) + (1 if full else 0)) * mb * i
    lora = 0.0
    if setup.method in ("lora", "qlora"):
        d = _lora_inputs(shape, setup.lora_targets)
        drops = dropout_kept_bytes(setup.lora_dropout, setup.device)
        lora = d * ((drops + kept) if drops else (kept if kept != rb else 0))
        lora += len(setup.lora_targets) * setup.lora_r * kept
    return _norms(shape, setup, full) + attn + mlp + lora


# sftkit.train.dropout rounds p to a multiple of 1/DROPOUT_LEVELS and draws a CPU dropout of at most
# DROPOUT_GAPS_MAX_P as the dropped elements' positions (above it the ~8 ns per dropped element cost more
# than 16-bit levels' ~0.6 ns per element); it reads both, and dropout_draws_positions, from here
DROPOUT_LEVELS = 65536
DROPOUT_GAPS_MAX_P = 0.075


def dropout_draws_positions(levels: int, device: str) -> bool:
    """Whether sftkit's dropout of ``levels`` / 65,536 draws the dropped positions (else a one-byte mask)."""
    return device == "cpu" and 0 < levels <= DROPOUT_GAPS_MAX_P * DROPOUT_LEVELS


def dropout_kept_bytes(p: float, device: str) -> float:
    """Bytes per input element a LoRA dropout keeps for the backward pass: an int64 position per dropped
    element where sftkit draws positions (a CPU, small p), else a one-byte mask (torch's bool, sftkit's
    uint8); 0 without dropout."""
    if p <= 0:
        return 0.0
    return 8 * p if dropout_draws_positions(round(p * DROPOUT_LEVELS), device) else 1.0


# sftkit.train.blockattn computes in blocks of this many query rows and keeps at most this many bytes of
# probabilities per call; it reads both, and block_probs_bytes, from here
BLOCK_ROWS = 128
BLOCK_MAX_KEPT_BYTES = 32 * 2**20


def block_probs_bytes(heads: int, length: int, itemsize: int) -> int:
    """The probabilities block attention keeps for one segment of ``length`` tokens in one layer: block
    [r0, r1) keeps r1 - r0 rows of r1 keys per head."""
    return heads * itemsize * sum(min(BLOCK_ROWS, length - r0) * min(length, r0 + BLOCK_ROWS)
                                  for r0 in range(0, length, BLOCK_ROWS))


def block_attention_bytes(heads: int, length: int, itemsize: int) -> int:
    """What sftkit's CPU block attention keeps for such a segment; 0 past its bound, where SDPA runs."""
    kept = block_probs_bytes(heads, length, itemsize)
    return kept if kept <= BLOCK_MAX_KEPT_BYTES else 0


def activation_bytes(shape: ModelShape, setup: Setup) -> float:
    """All decoder layers for one micro-batch; with checkpointing, each layer's input plus one layer recomputed."""
    rb = DTYPE_BYTES[setup.weight_dtype]
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


def _head_trains(setup: Setup) -> bool:
    return setup.method == "full"


def logits_loss_bytes(shape: ModelShape, setup: Setup) -> float:
    """Head and loss at the start of the backward pass, when every activation is still alive.

    plain (transformers): the fp32 log-softmax output is kept, and its backward holds the incoming and the
    outgoing fp32 gradient beside it: 12 bytes per token x vocab (the forward's 16-bit logits + fp32 copy
    + log-softmax, 10 bytes, is lower). chunked (sftkit) / liger (fused): one chunk of logits, the trained
    rows' hidden states and their gradient, and an fp32 weight gradient when the head trains.
    Also the final norm's fp32 input (+ the head's input when the head trains)."""
    rb, ab, _, _ = _bytes(setup)
    t, h, v = setup.tokens, shape.hidden, shape.vocab
    final_norm = t * h * (4 + ((rb + ab) if _head_trains(setup) else 0))
    if setup.loss_head == "plain" and not setup.liger:
        return final_norm + t * v * 12
    rows = t * setup.trained_fraction
    chunk = min(CHUNK_BYTES, 2.5 * rows * v * 4)
    grad_w = v * h * 4 if _head_trains(setup) else 0.0
    return final_norm + chunk + 2 * rows * h * ab + grad_w


def autocast_copy_bytes(shape: ModelShape, setup: Setup) -> float:
    """Autocast casts fp32 weights to 16 bits once per forward and autograd keeps the
    casts for backward: a 16-bit copy of every projection and the head (one layer's with
    checkpointing, whose recomputation casts again)."""
    if not setup.autocast or DTYPE_BYTES[setup.weight_dtype] == 2 or setup.method == "qlora":
        return 0.0
    layers = 1 if setup.gradient_checkpointing else shape.layers
    head = shape.vocab * shape.hidden if setup.loss_head == "plain" and not setup.liger else 0  # chunks cast per chunk
    return 2 * (layers * shape.linear_params_per_layer + head)


def weight_bytes(shape: ModelShape, setup: Setup) -> float:
    if setup.method == "qlora":  # projections in NF4; embeddings, head and norms as loaded (weight_dtype)
        quantised = shape.layers * shape.linear_params_per_layer
        return quantised * NF4_BYTES + (shape.n_params - quantised) * DTYPE_BYTES[setup.weight_dtype]
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
        "optimizer_step_temp": n * state_b if setup.optim == "adamw" and not master else 0.0,  # fused: in place
    }


# What each term of the breakdown is, in one line (the estimate's table and the console show it).
EXPLAIN = {
    "weights": "base weights as loaded (QLoRA: NF4 projections + constants, the rest in model.dtype)",
    "lora_adapters": "LoRA A/B matrices, fp32",
    "gradients": "one gradient per trainable weight",
    "master_weights": "fp32 master copy of 16-bit trainable weights (mixed precision / DeepSpeed)",
    "optimizer_states": "AdamW m and v (8-bit optimizers: 1 byte each)",
    "optimizer_step_temp": "foreach AdamW's sqrt(v) buffer during step()",
    "activations": "what autograd keeps per decoder layer x layers x micro-batch tokens",
    "autocast_weight_copies": "16-bit casts of fp32 weights that autograd keeps until backward",
    "logits_loss": "loss head: plain = fp32 log-softmax of tokens x vocab and its two gradients; chunked/liger = "
                   "one chunk of logits and the trained rows' hidden states and gradients",
    "not_simultaneous": "terms above that are never alive at the same moment (grads vs activations)",
    "allocator_retention": "CPU: freed blocks glibc malloc keeps (measured once)",
    "framework_overhead": "CUDA context, or the torch/transformers process baseline on CPU",
}
