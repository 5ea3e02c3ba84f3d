"""Teachers for ``sft data synth``: a local model (any reference ``sft chat`` accepts) through the
one generation ``Engine``, decoding greedily so that drafting twice gives the same pairs; or an
OpenAI-compatible endpoint by URL (``sftkit.infer.remote``)."""

from __future__ import annotations

from sftkit.core.conversation import Conversation
from sftkit.infer.engine import Engine, GenParams
from sftkit.infer.remote import Chat, HttpTeacher, is_url


class EngineTeacher:
    """A local model reference or run folder as the teacher (batched greedy generation)."""

    def __init__(self, engine: Engine, name: str, max_new_tokens: int = 512) -> None:
        self.engine, self.name = engine, name
        self.params = GenParams(max_new_tokens=max_new_tokens, temperature=0.0)

    def __call__(self, chats: list[Chat]) -> list[str]:
        prompts = [self.engine.prompt_for(Conversation.from_messages(c)) for c in chats]
        return [r.text for r in self.engine.generate(prompts, self.params)]


def make_teacher(ref: str, model: str | None = None, api_key: str | None = None, max_new_tokens: int = 512,
                 batch_size: int = 8, dtype: str | None = None, device: str = "auto") -> EngineTeacher | HttpTeacher:
    """``ref`` is an ``http(s)://…/v1`` URL or any model reference ``sft chat`` accepts (loaded on the
    device the rule picks, ``sftkit.hub.device``)."""
    if is_url(ref):
        return HttpTeacher(ref, model, api_key, max_new_tokens)
    engine = Engine.from_ref(ref, dtype=dtype, batch_size=batch_size, device=device)
    return EngineTeacher(engine, ref, max_new_tokens)
