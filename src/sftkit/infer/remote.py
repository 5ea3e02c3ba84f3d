"""An OpenAI-compatible endpoint (``sft serve``, vLLM, a hosted API) as the teacher of
``sft data synth``, given by its ``http(s)://…/v1`` URL.

Greedy decoding (temperature 0, a fixed seed where the server honours one), so drafting the
same chunks twice gives the same pairs. The API key comes from the environment, never from the
command line (where it would land in the shell history). Kept apart from the local-model teacher
so that using an endpoint never imports torch.
"""

from __future__ import annotations

import time
from typing import Any

from sftkit.core.errors import TeacherError

Chat = list[dict[str, str]]
RETRIES = 2  # a busy endpoint (429, 5xx) is asked again after 1 s, then 2 s


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


class HttpTeacher:
    """An OpenAI-compatible ``/v1`` endpoint as the teacher: ``POST {url}/chat/completions``."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 max_new_tokens: int = 512, timeout: float = 300.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.max_new_tokens = max_new_tokens
        self.model = model or self._first_model()
        self.name = f"{self.url}#{self.model}"

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        for attempt in range(RETRIES + 1):
            try:
                r = self.client.request(method, path, json=body)
            except httpx.HTTPError as e:
                raise TeacherError(f"teacher {self.url}: cannot connect ({type(e).__name__}: {e}); "
                                   "check the URL and that the server is running") from None
            if (r.status_code == 429 or r.status_code >= 500) and attempt < RETRIES:
                time.sleep(2**attempt)
                continue
            if r.status_code in (401, 403):
                raise TeacherError(f"teacher {self.url}: the API key was refused (HTTP {r.status_code}); "
                                   "set it in the variable --api-key-env names (default OPENAI_API_KEY)")
            if r.status_code >= 400:
                raise TeacherError(f"teacher {self.url}{path}: HTTP {r.status_code}: {r.text[:300]}")
            try:
                return r.json()
            except ValueError:
                raise TeacherError(f"teacher {self.url}{path}: the reply is not JSON: {r.text[:200]!r}") from None
        raise AssertionError("unreachable")

    def _first_model(self) -> str:
        data = self._request("GET", "/models").get("data") or []
        if not data or not isinstance(data[0], dict) or "id" not in data[0]:
            raise TeacherError(f"teacher {self.url}: /models lists no model; name one with --teacher-model")
        return str(data[0]["id"])

    def __call__(self, chats: list[Chat]) -> list[str]:
        return [self._one(c) for c in chats]

    def _one(self, chat: Chat) -> str:
        body = {"model": self.model, "messages": chat, "temperature": 0, "seed": 0,
                "max_tokens": self.max_new_tokens}
        reply = self._request("POST", "/chat/completions", body)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"teacher {self.url}: not a chat completion: {str(reply)[:200]}") from None
