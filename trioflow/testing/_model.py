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

    async def stream(self, prompt: str) -> AsyncIterator[ModelChunk]:
        self.prompts.append(prompt)
        for chunk in self.chunks:
            await trio.lowlevel.checkpoint()
            yield chunk
