"""`linewatch feed camera`: options for the frame sources and a progress bar.

Files: `--dir` (a folder of images) and `--video` (animated GIF/PNG/WebP, multi-frame TIFF) go through
`feed.frames`. Live sources go through `feed.sources`: `--genicam DEVICE_ID` (GigE Vision / USB3 Vision
through Aravis, `feed.genicam`) and `--url` (video files such as MP4/MKV/AVI, rtsp:// streams, /dev/video*
through PyAV, `feed.video`), with optional line-scan assembly (`feed.linescan`).
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
    genicam: Annotated[
        str | None, typer.Option("--genicam", help="GenICam camera: device id from `arv-tool-0.8`, or a GigE IP")
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="video file (MP4/MKV/AVI/MOV), rtsp://..., or /dev/videoN")
    ] = None,
    pixel_format: Annotated[str | None, typer.Option(help="GenICam: Mono8, Mono12, BayerRG8, RGB8, ...")] = None,
    roi: Annotated[str | None, typer.Option(help="GenICam: region x,y,width,height")] = None,
    exposure_us: Annotated[float | None, typer.Option(min=0.0, help="GenICam: exposure time in µs")] = None,
    frame_rate: Annotated[
        float | None, typer.Option(min=0.0, help="GenICam: acquisition rate (or software trigger rate)")
    ] = None,
    trigger: Annotated[
        str | None, typer.Option(help="GenICam: off (free run), software, or a line such as Line1")
    ] = None,
    feature: Annotated[
        list[str] | None, typer.Option("--feature", help="GenICam: any feature as Name=Value (repeatable)")
    ] = None,
    encoding: Annotated[str | None, typer.Option(help="live sources: png (lossless) or jpeg")] = None,
    jpeg_quality: Annotated[int | None, typer.Option(min=1, max=100, help="live sources: JPEG quality")] = None,
    mono: Annotated[bool, typer.Option("--mono", help="--url: send grey frames instead of RGB")] = False,
    line_scan: Annotated[bool, typer.Option("--line-scan", help="assemble line buffers into frames")] = False,
    lines_per_frame: Annotated[int | None, typer.Option(min=2, help="--line-scan: lines per frame")] = None,
    overlap: Annotated[int, typer.Option(min=0, help="--line-scan: lines shared by neighbouring frames")] = 0,
    max_frames: Annotated[int | None, typer.Option(min=1, help="live sources: stop after sending this many")] = None,
    give_up_after: Annotated[
        float | None, typer.Option(min=0.0, help="live sources: stop reconnecting after this many seconds")
    ] = None,
) -> None:
    """Push images to the frames topic: a folder, a multi-frame image, a GenICam camera, a video file or stream.

    With --genicam or --url, --fps keeps at most that many frames per second (sub-sampling); with --dir or
    --video it paces sending.
    """
    from tqdm import tqdm

    if sum(x is not None for x in (directory, video, genicam, url)) != 1:
        console.print("[red]give exactly one of --dir DIR, --video FILE, --genicam DEVICE_ID or --url URL[/]")
        raise typer.Exit(2)
    if line_scan != (lines_per_frame is not None):
        console.print("[red]--line-scan needs --lines-per-frame N (and --lines-per-frame needs --line-scan)[/]")
        raise typer.Exit(2)
    if genicam is not None or url is not None:
        _live(
            ctx, camera_id, claim_check_dir, inline_limit, genicam=genicam, url=url, fps=fps,
            pixel_format=pixel_format, roi=roi, exposure_us=exposure_us, frame_rate=frame_rate, trigger=trigger,
            features=feature or [], encoding=encoding, jpeg_quality=jpeg_quality, mono=mono,
            lines_per_frame=lines_per_frame, overlap=overlap, max_frames=max_frames, give_up_after=give_up_after,
        )  # fmt: skip
        return

    from stream_app.feed.frames import (
        IMAGE_SUFFIXES,
        Frame,
        feed_frames,
        folder_frames,
        open_multiframe,
        read_image_file,
        video_frames,
    )

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


def _live(
    ctx: typer.Context,
    camera_id: str,
    claim_check_dir: Path | None,
    inline_limit: int | None,
    *,
    genicam: str | None,
    url: str | None,
    fps: float | None,
    pixel_format: str | None,
    roi: str | None,
    exposure_us: float | None,
    frame_rate: float | None,
    trigger: str | None,
    features: list[str],
    encoding: str | None,
    jpeg_quality: int | None,
    mono: bool,
    lines_per_frame: int | None,
    overlap: int,
    max_frames: int | None,
    give_up_after: float | None,
) -> None:
    """--genicam / --url: build the source and options, stream with a progress bar, print the report."""
    from tqdm import tqdm

    from stream_app.feed.captures import FrameSource
    from stream_app.feed.frames import Frame
    from stream_app.feed.genicam import GenicamConfig, GenicamSource, parse_features, parse_roi
    from stream_app.feed.sources import LiveOptions, backoff, feed_source
    from stream_app.feed.video import VideoSource

    settings = ctx.obj
    if encoding not in (None, "png", "jpeg"):
        console.print(f"[red]--encoding must be png or jpeg, got {escape(encoding)}[/]")
        raise typer.Exit(2)
    if lines_per_frame is not None and overlap >= lines_per_frame:
        console.print(f"[red]--overlap must be below --lines-per-frame ({lines_per_frame})[/]")
        raise typer.Exit(2)
    retry = backoff(settings, give_up_after)
    source: FrameSource
    if genicam is not None:
        try:
            region = parse_roi(roi) if roi else None
            named = parse_features(features)
        except ValueError as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(2) from None
        config = GenicamConfig(
            genicam, pixel_format, region, exposure_us, frame_rate, trigger, named,
            settings.camera.buffers, settings.camera.buffer_timeout_s,
        )  # fmt: skip
        source = GenicamSource(config, retry)
    else:
        timeout = settings.camera.open_timeout_s
        assert url is not None
        source = VideoSource(url, None, mono, retry, timeout, timeout)  # sub-sampled in feed_source
    options = LiveOptions.from_settings(
        settings, encoding=encoding, jpeg_quality=jpeg_quality, fps=fps, max_frames=max_frames,
        lines_per_frame=lines_per_frame, overlap=overlap,
    )  # fmt: skip
    bar = tqdm(total=options.max_frames, unit="frame", desc=f"feed {camera_id}", dynamic_ncols=True)

    def on_frame(frame: Frame, sent: bool) -> None:
        if sent:
            bar.update(1)
        else:
            bar.write(f"{'dropped' if frame.dropped else 'skipped'} {frame.error}")

    try:
        report = asyncio.run(
            feed_source(
                settings, source, camera_id, options, claim_check_dir, inline_limit, on_frame=on_frame,
                on_notice=lambda n: bar.write(n.message),
            )
        )  # fmt: skip
    except KeyboardInterrupt:
        bar.close()
        console.print("stopped")
        return
    except ValueError as exc:  # e.g. a frame over Kafka's limit with nowhere to put a claim-check
        bar.close()
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    finally:
        bar.close()
    console.print(
        f"sent {report.sent} frames from {escape(source.name)} to {settings.topics.frames} "
        f"({report.claim_checked} as claim-checks), dropped {report.dropped} incomplete, skipped {report.skipped}, "
        f"{report.reconnects} reconnects, {report.underruns} buffer underruns, in {report.elapsed_s:.1f} s"
    )
    if report.failure:
        console.print(f"[red]stopped: {escape(report.failure)}[/]")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `feed` (camera) to the root CLI."""
    app.add_typer(feed_app, name="feed")
