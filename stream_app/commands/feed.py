"""`linewatch feed camera`: options for `feed.frames` (a folder, or a multi-frame image file) and a progress bar.

`--video` reads frames with Pillow: animated GIF, multi-frame TIFF, animated PNG/WebP. Real video containers
(MP4, AVI, MKV) would need OpenCV or ffmpeg bindings, so they are refused with an error that says how to
extract frames (`ffmpeg -i in.mp4 frames/%05d.png`) and feed the folder instead.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console(soft_wrap=True, highlight=False)
feed_app = typer.Typer(help="Push real data into the pipeline's input topics.", no_args_is_help=True)


@feed_app.command()
def camera(
    ctx: typer.Context,
    camera_id: Annotated[str, typer.Option("--camera", help="camera id: the frames' source and message key")],
    directory: Annotated[
        Path | None, typer.Option("--dir", file_okay=False, help="folder of .png/.jpg/.jpeg/.bmp files")
    ] = None,
    video: Annotated[
        Path | None, typer.Option("--video", dir_okay=False, help="animated GIF/PNG/WebP or multi-frame TIFF")
    ] = None,
    fps: Annotated[float | None, typer.Option(min=0.0, help="frames per second (default: as fast as possible)")] = None,
    loop: Annotated[bool, typer.Option("--loop", help="start over at the end until Ctrl-C")] = False,
    claim_check_dir: Annotated[
        Path | None, typer.Option(help="where large frames are kept for workers (default: first claim_check_dirs)")
    ] = None,
    inline_limit: Annotated[
        int | None, typer.Option(help="frames above this many bytes go as claim-checks (default: Kafka's limit)")
    ] = None,
) -> None:
    """Push a folder of images or a multi-frame image file to the frames topic, with a progress bar."""
    from tqdm import tqdm

    from stream_app.feed.frames import (
        IMAGE_SUFFIXES,
        Frame,
        feed_frames,
        folder_frames,
        open_multiframe,
        read_image_file,
        video_frames,
    )

    if (directory is None) == (video is None):
        console.print("[red]give exactly one of --dir DIR or --video FILE[/]")
        raise typer.Exit(2)
    settings = ctx.obj
    if directory is not None:
        if not directory.is_dir():
            console.print(f"[red]--dir {directory} is not a directory[/]")
            raise typer.Exit(2)
        paths = folder_frames(directory)
        if not paths:
            console.print(f"[red]no {'/'.join(IMAGE_SUFFIXES)} files in {directory}[/]")
            raise typer.Exit(2)
        total = len(paths)

        def source() -> Iterator[Frame]:
            return (read_image_file(p) for p in paths)
    else:
        assert video is not None
        try:
            open_multiframe(video).close()  # fail now, with the message, rather than after the stack connects
        except ValueError as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(2) from None
        total = None

        def source() -> Iterator[Frame]:
            return video_frames(video)

    def frames() -> Iterator[Frame]:
        while True:
            yield from source()
            if not loop:
                return

    bar = tqdm(total=None if loop else total, unit="frame", desc=f"feed {camera_id}", dynamic_ncols=True)
    skipped: Counter[str] = Counter()

    def on_frame(frame: Frame, sent: bool) -> None:
        bar.update(1)
        if not sent:
            skipped[frame.name] += 1
            bar.write(f"skipped {frame.error}")

    try:
        report = asyncio.run(
            feed_frames(settings, frames(), camera_id, fps, claim_check_dir, inline_limit, on_frame=on_frame)
        )
    except KeyboardInterrupt:
        bar.close()
        console.print("stopped")
        return
    finally:
        bar.close()
    if report.claim_checked and claim_check_dir is None and not settings.claim_check_dirs:
        console.print(
            "[yellow]claim-checks point at the files themselves: list their folder in the workers' claim_check_dirs[/]"
        )
    console.print(
        f"sent {report.sent} frames to {settings.topics.frames} ({report.claim_checked} as claim-checks), "
        f"skipped {report.skipped} unreadable, in {report.elapsed_s:.1f} s"
    )


def register(app: typer.Typer) -> None:
    """Add `feed` (camera) to the root CLI."""
    app.add_typer(feed_app, name="feed")
