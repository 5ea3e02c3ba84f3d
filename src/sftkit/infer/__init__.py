"""Inference: the one batched generation engine (and vLLM behind the same interface), the request
batcher, the OpenAI-compatible server, terminal chat, and answer files (``sft generate``)."""
