"""A scripted model for tests of agent steps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import trio

from .._agent import ModelChunk
from .._core._model import Usage


class ScriptedModel:
    """Replays ``chunks`` on every ``stream(prompt)`` call (a checkpoint before each), and
    remembers the prompts it was given in ``prompts``."""

    def __init__(self, chunks: Iterable[ModelChunk]) -> None:
        self.chunks = list(chunks)
        self.prompts: list[str] = []

    @classmethod
    def from_text(cls, text: str, usage: Usage | None = None) -> ScriptedModel:
        """Word-by-word ``text-delta`` chunks of ``text``, then ``finish`` with ``usage``."""
        words = text.split(" ")
        deltas = [
            ModelChunk("text-delta", text=word if i == 0 else " " + word)
            for i, word in enumerate(words)
            if word or i == 0
        ]
        return cls([*deltas, ModelChunk("finish", usage=usage)])

    def stream(self, prompt: str) -> AsyncIterator[ModelChunk]:
        self.prompts.append(prompt)
        return _Replay(list(self.chunks))


class _Replay:
    """An async iterator over a list (a checkpoint before each item and at the end)."""

    def __init__(self, chunks: list[ModelChunk]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> ModelChunk:
        await trio.lowlevel.checkpoint()
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None
