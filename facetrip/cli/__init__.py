"""The ``facetrip`` command line: parse arguments, call the library, print the results.

One module per command group (:mod:`~facetrip.cli.data`: synth, cache; :mod:`~facetrip.cli.align`;
:mod:`~facetrip.cli.train`; :mod:`~facetrip.cli.evaluate`: eval; :mod:`~facetrip.cli.deploy`:
embed, export; :mod:`~facetrip.cli.recognize`: verify, enroll, identify;
:mod:`~facetrip.cli.pack`: pack), listed in
``facetrip --help`` in the order of a workflow (:data:`WORKFLOW`). :func:`main` turns a user's
mistake into one line and exit code 2.
"""

from __future__ import annotations

import typer
from tqdm.contrib.logging import logging_redirect_tqdm

from facetrip.cli import (  # noqa: F401  (register the commands)
    align,
    data,
    deploy,
    evaluate,
    pack,
    recognize,
    train,
)
from facetrip.cli.app import app, library_logger
from facetrip.errors import UserError

__all__ = ["WORKFLOW", "app", "main"]

WORKFLOW = ("synth", "cache", "align", "pack", "train", "eval", "export", "embed", "verify",
            "enroll", "identify")
"""The commands in the order a user meets them; ``--help`` lists them so."""


def _command_name(info: typer.models.CommandInfo) -> str:
    return info.name or info.callback.__name__.rstrip("_").replace("_", "-")


app.registered_commands.sort(key=lambda info: (
    WORKFLOW.index(_command_name(info)) if _command_name(info) in WORKFLOW else len(WORKFLOW)))


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    logger = library_logger()
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            app()
    except (UserError, FileExistsError, FileNotFoundError, NotADirectoryError,
            PermissionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
