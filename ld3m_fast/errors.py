"""The exceptions ld3m_fast raises for problems a user can fix (bad input, missing or damaged files, missing
packages, a run that does not match its checkpoint).

Each subclasses the built-in exception that ``except`` clauses already catch (``ValueError``,
``TypeError``, ``FileNotFoundError``, ``ImportError``), so existing code keeps working, and all
share ``LD3MError``: the command line prints any of them as one line and exits with status 2, while
a genuine bug keeps its traceback (status 1).
"""
from __future__ import annotations


class LD3MError(Exception):
    """A problem with what ld3m_fast was given; the message names the argument or file and the fix."""


class InvalidArgumentError(LD3MError, ValueError):
    """An argument has a value ld3m_fast cannot use (out of range, wrong shape, NaN, unknown name, ...)."""


class InvalidTypeError(LD3MError, TypeError):
    """An argument has a type (or dtype) ld3m_fast cannot use."""


class MissingFileError(LD3MError, FileNotFoundError):
    """A file or folder ld3m_fast was pointed at does not exist."""


class DamagedFileError(LD3MError, ValueError):
    """A file exists but cannot be read: truncated, corrupt, tampered with, or of another format."""


class IncompatibleRunError(LD3MError, ValueError):
    """A checkpoint, expert buffer or output folder belongs to another run than the one asked for."""


class MissingDependencyError(LD3MError, ImportError):
    """An optional package that this feature needs is not installed."""


class DeviceError(LD3MError, ValueError):
    """A device was asked for that this machine does not have (e.g. ``cuda`` without a GPU)."""


class DistillationDiverged(LD3MError, RuntimeError):
    """The loss (or a gradient) became NaN/Inf; ``iteration`` says when, ``last_good`` holds the set before it."""

    def __init__(self, iteration: int, what: str, last_good=None):
        super().__init__(f"{what} is NaN/Inf at iteration {iteration}: distillation stopped; the synthetic set of "
                         f"the last good iteration ({iteration - 1}) is kept (`.last_good`, and the checkpoint if "
                         "checkpoint_dir is set). Lower the learning rate or check the data")
        self.iteration, self.last_good = iteration, last_good


class RunInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped a run at an iteration boundary, after its checkpoint was written.

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C keeps doing so; ``signal`` is the signal's number.
    """

    def __init__(self, signal: int, message: str):
        super().__init__(message)
        self.signal = signal
