"""The Typer application, its logging, and what every command module shares: the renamed
options' deprecation, list options, ``--device``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Annotated, TypeVar

import typer

from facetrip.errors import UserError

# rich_markup_mode=None: plain help text (no "<bool>" beside --help, readable when piped);
# commands are listed in the order their modules register them (facetrip.cli.__init__)
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Train, evaluate, export and use triplet-loss face embedding models. The commands "
         "are listed in the order of a workflow; each has --help.",
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

MODEL_HELP = ("Model: a checkpoint (.pt) from facetrip train, or a file from facetrip export "
              "(TorchScript .pt, .onnx, .safetensors, with its .json sidecar beside it).")
BATCH_SIZE_HELP = "Images per batch."
WORKERS_HELP = "Decoding worker processes (default: CPU cores - 1, 1 to 8; 0 = in-process)."
DEVICE_HELP = "auto, cpu or cuda."
#: ``--align/--no-align`` of every command that embeds images (None: as the model records)
Align = Annotated[bool | None, typer.Option(
    "--align/--no-align", show_default=False,
    help="Detect and align each face (default: when the model was trained on aligned crops; "
         "--no-align: the inputs are aligned crops already; --align: align for a model that "
         "does not record it).")]


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


def renamed(new_value: T | None, old_value: T | None, new: str, old: str) -> T | None:
    """The value of option ``new``, or of its deprecated spelling ``old`` (a hidden option
    that still works, with a one-line deprecation on stderr). Both given: UserError."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise UserError(f"{old} is the old name of {new}: give one of them")
    typer.echo(f"warning: {old} is deprecated, use {new}", err=True)
    return old_value


def split_list(values: Iterable[str] | None) -> list[str]:
    """A list option's values: repeatable, and each value may hold several, comma-separated
    (``--x a --x b,c`` -> ``[a, b, c]``); blanks dropped."""
    return [v.strip() for value in values or [] for v in str(value).split(",") if v.strip()]


def device(name: str, option: str = "--device"):
    """``--device`` -> a torch device (UserError naming ``option`` when CUDA is asked for
    and absent)."""
    from facetrip.training.build import resolve_device

    return resolve_device(name, option)


def default_workers(workers: int | None) -> int:
    """``--workers``: decoding worker processes; None = one per CPU core but one (for the
    model), 1 to 8. UserError when negative."""
    from facetrip.training.build import resolve_workers

    if workers is not None and workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    return resolve_workers(workers)


def check_batch_size(batch_size: int) -> int:
    """``--batch-size``, checked (UserError below 1)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    return batch_size
