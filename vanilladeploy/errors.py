"""One exception family; each kind carries the process exit code the CLI returns for it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``vanilladeploy`` command (documented in README and ``--help``)."""

    OK = 0
    VERIFICATION_FAILED = 1
    BAD_INPUT = 2
    MISSING_DEPENDENCY = 3
    INTERNAL = 4
    """A bug: anything that is not one of our errors."""
    INTERRUPTED = 130


class VanillaDeployError(Exception):
    """Base class: a message that says what went wrong and how to fix it."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class CheckpointError(VanillaDeployError):
    """The file cannot be read safely or is not a usable checkpoint (missing, corrupt, unsafe pickle, bad values)."""


class ArchitectureError(VanillaDeployError):
    """The tensors match no VanillaNet variant, or several (pass ``--arch``), or keys/shapes are off."""


class InexactMergeError(VanillaDeployError):
    """The checkpoint was trained with λ < 1, so merging its two 1x1 convs would change the network."""


class UsageError(VanillaDeployError):
    """An option value that cannot work (e.g. an image size too small for the variant)."""


class OutputError(VanillaDeployError):
    """The output directory cannot be created or written (a file in the way, permissions, disk full)."""


class VerificationError(VanillaDeployError):
    """An artifact does not reproduce the reference within tolerance, or breaks the graph contract."""

    exit_code = ExitCode.VERIFICATION_FAILED


class MissingDependencyError(VanillaDeployError):
    """An optional dependency (extra) is not installed."""

    exit_code = ExitCode.MISSING_DEPENDENCY
