"""``facetrip pack``: an identity folder -> an insightface RecordIO set (``.rec`` + ``.idx``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import app


@app.command(short_help="Write an identity folder as a RecordIO set (train.rec + .idx).",
             help="Write an identity folder as an insightface RecordIO set: OUT (.rec), its "
                  ".idx, a property file (num_classes,height,width) and the identity names "
                  "(OUT's stem + .identities.txt). Every image file's bytes are stored as they "
                  "are (no re-encoding); unusable files are skipped and counted. Train from it "
                  "with --set data.root=OUT, or read it with insightface's tools.")
def pack(
    data: Annotated[Path, typer.Argument(help="Identity-folder dataset: DATA/<identity>/<image>.")],
    out: Annotated[Path, typer.Option(help="The .rec to write, e.g. DIR/train.rec.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    from facetrip.data.index import scan_identity_folder
    from facetrip.data.recordio import check_pack_target, write_record_set

    check_pack_target(out, overwrite)
    index = scan_identity_folder(data)
    with tqdm(total=len(index), desc="pack", unit="img", delay=0.5) as bar:
        result = write_record_set(index, out, progress=bar.update)
    height, width = result.image_size
    typer.echo(f"wrote {result.images} images of {result.identities} identities to {out} "
               f"({result.bytes / 2**20:.1f} MiB; {result.idx.name}, {result.property.name}: "
               f"{result.identities},{height},{width}, {result.names.name})")
    if result.skipped:
        typer.echo(f"warning: {result.skip_summary()}", err=True)
