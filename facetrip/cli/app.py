"""The Typer application, its logging, and what every command module shares."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, evaluate, embed with and export triplet-loss face embedding models.",
    pretty_exceptions_enable=False,
)


class _LevelFormatter(logging.Formatter):
    """``warning: message``: the level in lower case, as the CLI's own messages."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def library_logger() -> logging.Logger:
    """The ``facetrip`` logger, printing to stderr; :func:`main` routes it through tqdm
    (``tqdm.contrib.logging``) so warnings do not break progress bars."""
    logger = logging.getLogger("facetrip")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_LevelFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def device(name: str):
    """``--device`` -> a torch device (UserError when CUDA is asked for and absent)."""
    from facetrip.training.build import resolve_device

    return resolve_device(name)
