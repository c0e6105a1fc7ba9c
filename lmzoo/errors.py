"""Exception types. Every user mistake raises a subclass of `LmzooError` with a one-line message
that names what was wrong and what was expected; the CLI prints that line and exits non-zero."""

from __future__ import annotations


class LmzooError(Exception):
    """Base class for errors caused by input (paths, checkpoints, configs, parameters)."""


class ModelNotFoundError(LmzooError, FileNotFoundError):
    """A model path that does not exist, or a directory without the files a checkpoint needs."""


class UnsupportedModelError(LmzooError, ValueError):
    """A checkpoint whose architecture (`model_type`, GGUF architecture, setting) we do not run."""


class CheckpointError(LmzooError, ValueError):
    """A truncated or corrupt file, missing or unexpected tensors, or a tensor of the wrong shape."""


class ConfigError(LmzooError, ValueError):
    """An invalid ModelConfig value."""


class ContextLengthError(LmzooError, ValueError):
    """A prompt (plus requested new tokens) longer than the model or cache can hold."""


class GenerationError(LmzooError, ValueError):
    """An invalid sampling or generation parameter (temperature < 0, top_p outside (0, 1], ...)."""


class InputError(GenerationError):
    """Model inputs (token ids, attention masks) of the wrong type, shape or range (a GenerationError,
    so code that catches that for lmzoo.generate keeps working)."""


class TokenizerError(LmzooError, ValueError):
    """A tokenizer that cannot be found or built, or a chat template that cannot be rendered."""


class UnknownModelError(LmzooError, KeyError):
    """A model name that is not in the catalog (the message suggests the closest names)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ResourceError(LmzooError, OSError):
    """The machine, not the input: out of memory or disk space (the CLI exits with 1, not 2)."""


def resource_error(e: BaseException) -> ResourceError | None:
    """The ResourceError an exception from torch / the OS stands for, or None if it is not one:
    MemoryError, torch's OutOfMemoryError or CPU allocator failure, ENOMEM (an mmap refused), a shared
    library that cannot be mapped, ENOSPC."""
    import errno

    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
            isinstance(e, RuntimeError) and ("can't allocate memory" in first or "out of memory" in first)) or (
            isinstance(e, OSError) and e.errno == errno.ENOMEM) or (
            isinstance(e, ImportError) and "failed to map segment" in first):  # a shared library under a cap
        return ResourceError(f"out of memory ({first}); expected more free memory: try a smaller or quantised "
                             "model, a lower dtype, or a shorter context")
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return ResourceError(f"no space left on device ({e.filename or first}); expected free disk space")
    return None
