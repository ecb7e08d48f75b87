"""User-facing errors: the CLI prints their message as one line and exits non-zero."""
from compressors.base import SpecError


class EmbpressError(Exception):
    """Bad input or environment (unknown name, missing data, corrupt cache): one clear line."""


__all__ = ["EmbpressError", "SpecError"]
