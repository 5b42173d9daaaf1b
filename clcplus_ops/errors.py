"""The errors an operator is expected to meet (a bad id, a missing input, an unreachable store,
a bad configuration...). Their message says what is wrong and where; the command line prints
that one line (``-v`` adds the traceback) and Airflow shows it as the task's failure."""

from __future__ import annotations


class ClcplusError(Exception):
    """An expected failure whose message is meant for the operator."""


class InvalidIdError(ClcplusError, ValueError):
    """A PU id, tile id, model version or reference year that is not valid here."""


class StageInputError(ClcplusError):
    """A stage's input is missing or damaged (the message names the file and the stage that
    makes it)."""


class PermanentError(ClcplusError):
    """A failure that retrying cannot cure (no scenes in the archive, no registered model):
    Airflow fails the task without retries."""


class InjectedFaultError(ClcplusError):
    """A fault a drill injected (``drills.faults``): transient, as a lost worker would be."""
