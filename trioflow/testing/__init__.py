"""Tools for testing workflows: a scripted model, a fault-injecting storage (and, with
hypothesis installed, strategies, invariants and harnesses)."""

from ._faults import FaultyStorage as FaultyStorage
from ._faults import SimulatedCrash as SimulatedCrash
from ._model import ScriptedModel as ScriptedModel
