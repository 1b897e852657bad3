"""Tools for testing workflows: a scripted model (and, with hypothesis installed,
strategies, invariants and harnesses)."""

from ._model import ScriptedModel as ScriptedModel
