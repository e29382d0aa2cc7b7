"""The `rawdrive` command: argument parsing, configuration, and one function per command.

Exit status: 0 done; 1 some files or items failed (each reported with its reason); 2 the command
could not run at all (one line on stderr saying what to do); 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from rawdrive_cli import config as configuration
from rawdrive_cli import dlq, events, plan, tokens
from rawdrive_cli.errors import CliError, GatewayProblem
from rawdrive_cli.gateway import Gateway
from rawdrive_cli.selection import select_on_disk
from rawdrive_cli.state import StateFileError, UploadState
from rawdrive_cli.upload import Options, Outcome, Uploader

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXAMPLES = """examples:
  rawdrive upload ~/Pictures                     after `make dev`: every photo and video, 4 at a time
  rawdrive upload --include '*.jpg' --jobs 8 .   only JPEGs
  rawdrive events --follow                       what happens in the workspace, live
  rawdrive assets ls --status failed             what could not be processed, and why
settings: flags, then RAWDRIVE_* variables, then the dev stack's .data/env (found from the current
folder up), then defaults (gateway http://127.0.0.1:8080, workspace dev, library default)."""


# -- configuration -------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> configuration.Config:
    flags = {name: getattr(args, name, None) for name in configuration.VARIABLES}
    return configuration.load(flags, args.env_file)


def _token(cfg: configuration.Config) -> str:
    if cfg.token:
        return cfg.token
    if cfg.jwt_secret:  # the dev stack: mint one, as `make token` does
        return tokens.mint(cfg.jwt_secret, workspace=cfg.workspace, ttl_s=3600)
    raise CliError(
        "no token: pass --token or set RAWDRIVE_TOKEN (with the dev stack running, `make dev` writes "
        ".data/env and rawdrive finds it from inside the repository)"
    )


def _gateway(cfg: configuration.Config, *, retries: bool) -> Gateway:
    return Gateway(cfg.gateway_url, _token(cfg), cfg.workspace, retries=retries)


def _json_line(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


# -- upload --------------------------------------------------------------------------------------


async def cmd_upload(args: argparse.Namespace) -> int:
    cfg = _config(args)
    selection = select_on_disk(args.paths, include=args.include, exclude=args.exclude, hidden=args.hidden)
    outcomes = [Outcome(file=missing, state="failed", reason="no such file or folder") for missing in selection.missing]
    for outcome in outcomes:
        if args.json:
            _json_line(outcome)
    if not selection.files and not outcomes:
        raise CliError(f"nothing to upload under {' '.join(args.paths)} (check --include/--exclude, --hidden)")
    options = Options(
        protocol=args.protocol, s3_threshold=args.s3_threshold, part_jobs=args.part_jobs,
        limit_rate=args.limit_rate, wait=not args.no_wait, wait_timeout_s=args.wait_timeout, library=cfg.library,
    )
    total_bytes = sum(candidate.path.stat().st_size for candidate in selection.files if candidate.path.exists())
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with UploadState(cfg.state_file) as state:
        async with _gateway(cfg, retries=True) as gateway:
            await gateway.check_access()
            with Progress(*columns, console=err, disable=args.json or args.quiet, transient=True) as progress:
                total = progress.add_task(f"[bold]total[/] ({len(selection.files)} files)", total=total_bytes)
                uploader = Uploader(gateway, state, options, progress, total)
                jobs = asyncio.Semaphore(args.jobs)

                async def one(candidate: Any) -> Outcome:
                    async with jobs:
                        outcome = await uploader.upload(candidate)
                    if args.json:
                        _json_line(outcome)
                    else:
                        out.print(_outcome_line(outcome))  # above the bars: Progress redirects stdout
                    return outcome

                outcomes += await asyncio.gather(*(one(candidate) for candidate in selection.files))
    failed = [outcome for outcome in outcomes if outcome.failed]
    if not args.json:
        _summary(outcomes, failed)
    return 1 if failed else 0


def _outcome_line(outcome: Outcome) -> str:
    mark = {"available": "[green]✓[/]", "failed": "[red]✗[/]"}.get(outcome.state, "[yellow]•[/]")
    words = [mark, escape(outcome.file), f"asset {outcome.asset_id}" if outcome.asset_id else "", outcome.state]
    if outcome.skipped:
        words.append(f"({outcome.skipped.replace('_', ' ')})")
    if outcome.resumed_from:
        words.append(f"(resumed at {outcome.resumed_from} bytes)")
    if outcome.thumb_url:
        words.append(f"thumb {escape(outcome.thumb_url)}")
    if outcome.reason:
        words.append(f"[red]{escape(outcome.reason)}[/]")
    return " ".join(word for word in words if word)


def _summary(outcomes: list[Outcome], failed: list[Outcome]) -> None:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.state] = counts.get(outcome.state, 0) + 1
    out.print(f"{len(outcomes)} files: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if failed:
        table = Table(title="Failed", title_justify="left")
        table.add_column("file")
        table.add_column("reason")
        for outcome in failed:
            table.add_row(escape(outcome.file), escape(outcome.reason or "unknown"))
        out.print(table)


# -- events and dead letters ---------------------------------------------------------------------


async def cmd_events(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        subjects = [events.expand_subject(s, cfg.workspace) for s in args.subject] or events.default_subjects(cfg.workspace)
        for subject in subjects:
            events.stream_of(subject)
        since = events.parse_since(args.since, datetime.now(UTC)) if args.since else None
    except ValueError as error:
        raise CliError(str(error)) from None
    if since is None and not args.follow:
        since = events.parse_since("15m", datetime.now(UTC))
    await events.tail(cfg, subjects, since=since, follow=args.follow, as_json=args.json)
    return 0


async def cmd_dlq(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.dlq_command == "list":
        found = await dlq.letters(cfg)
        if args.json:
            for letter in found:
                _json_line(letter)
        elif not found:
            out.print("the dead-letter stream is empty")
        else:
            table = Table()
            for column in ("seq", "kind", "stream", "consumer", "subject", "deliveries", "reason"):
                table.add_column(column)
            for letter in found:
                table.add_row(str(letter.seq), letter.kind, letter.stream, letter.consumer, letter.subject or "(aged out)",
                              str(letter.deliveries), escape(letter.reason))
            out.print(table)
    elif args.dlq_command == "show":
        shown = await dlq.show(cfg, args.seq)
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(shown)).decode() + "\n")
    else:
        await dlq.replay(cfg, args.seq)
        out.print(f"replayed dead letter {args.seq} to its original subject and dropped it")
    return 0


# -- token ---------------------------------------------------------------------------------------


async def cmd_token(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if not cfg.jwt_secret:
        raise CliError(
            "no RAWDRIVE_JWT_SECRET to sign with: run `make dev` once (it writes .data/env) or set it; "
            "production tokens come from your identity provider"
        )
    print(tokens.mint(cfg.jwt_secret, workspace=cfg.workspace, role=args.role, sub=args.sub, ttl_s=args.ttl))
    return 0


# -- assets --------------------------------------------------------------------------------------


async def cmd_assets(args: argparse.Namespace) -> int:
    cfg = _config(args)
    async with _gateway(cfg, retries=False) as gateway:
        try:
            return await _assets(args, cfg, gateway)
        except GatewayProblem as problem:
            if problem.status == 404:
                raise CliError(f"{problem.detail}; `rawdrive assets ls` lists the workspace's assets") from None
            if problem.status == 410:
                raise CliError(problem.detail) from None
            raise


async def _assets(args: argparse.Namespace, cfg: configuration.Config, gateway: Gateway) -> int:
    command = args.assets_command
    if command == "ls":
        params = {"limit": str(min(args.limit, 100))}
        for name in ("status", "cursor"):
            if getattr(args, name):
                params[name] = getattr(args, name)
        if args.library:
            params["library_id"] = args.library
        page = await gateway.assets(params)
        if args.json:
            for item in page.items:
                _json_line(item)
            if page.next_cursor:
                _json_line({"next_cursor": page.next_cursor})
            return 0
        table = Table()
        for column in ("asset id", "status", "kind", "size", "created", "file"):
            table.add_column(column)
        for item in page.items:
            table.add_row(item["asset_id"], item["status"], item.get("kind") or "", str(item["size_bytes"]),
                          item["created_at"][:19], escape(item["file_name"]))
        out.print(table)
        if page.next_cursor:
            out.print(f"more: rawdrive assets ls --cursor {page.next_cursor}")
        return 0
    if command == "get":
        asset, document = await gateway.asset(args.asset_id)
        if args.json:
            _json_line(document)
        else:
            out.print(msgspec.json.format(msgspec.json.encode(document)).decode(), markup=False)
        return 0
    if command == "download":
        asset, _ = await gateway.asset(args.asset_id)
        target = Path(args.output or asset.file_name)
        if target.is_dir():
            target = target / asset.file_name
        url = await gateway.download_url(args.asset_id)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=err, disable=args.json, transient=True) as progress:
            task = progress.add_task(escape(asset.file_name), total=asset.size_bytes)
            async for n in gateway.download(url, target):
                progress.advance(task, n)
        if args.json:
            _json_line({"asset_id": args.asset_id, "path": str(target), "size_bytes": target.stat().st_size})
        else:
            out.print(f"saved {escape(str(target))} ({target.stat().st_size} bytes)")
        return 0
    if command == "rm":
        await gateway.delete_asset(args.asset_id)
        asset, document = await gateway.asset(args.asset_id)
        if args.json:
            _json_line(document)
        else:
            until = asset.purge_after.isoformat() if asset.purge_after else "the retention period ends"
            out.print(f"deleted {args.asset_id}; `rawdrive assets restore {args.asset_id}` undoes it until {until}")
        return 0
    asset, document = await gateway.restore_asset(args.asset_id)
    if args.json:
        _json_line(document)
    else:
        out.print(f"restored {args.asset_id}: {asset.status}")
    return 0


# -- parsing -------------------------------------------------------------------------------------


def _size(text: str) -> int:
    try:
        return plan.parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (else RAWDRIVE_* variables, else .data/env)")
    group.add_argument("--gateway", dest="gateway_url", metavar="URL", help="gateway base URL (RAWDRIVE_PUBLIC_URL)")
    group.add_argument("--token", help="bearer token (RAWDRIVE_TOKEN); with the dev stack one is minted")
    group.add_argument("--workspace", "-w", help="workspace id (RAWDRIVE_WORKSPACE, default dev)")
    group.add_argument("--nats-url", metavar="URL", help="NATS for events and dlq (RAWDRIVE_NATS_URL)")
    group.add_argument("--env-file", metavar="FILE", help="env file to read (RAWDRIVE_ENV_FILE, default .data/env)")
    common.add_argument("--json", action="store_true", help="JSON lines on stdout for scripts")

    top = argparse.ArgumentParser(
        prog="rawdrive", description="Upload files to RawDrive, follow its events, manage assets and dead letters.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "upload", parents=[common], help="upload files and folders; resumes what an earlier run left",
        description="Upload files and folders (recursively). Each file is hashed (SHA-256, declared to the "
        "gateway), sent by tus or, from --s3-threshold, by S3 multipart with parallel parts, committed, and "
        "awaited until the catalogue shows it available. Rerun the same command after Ctrl-C or a crash: "
        "unfinished files resume where the gateway stands, committed ones are skipped, and a file whose bytes "
        "an available asset of the workspace already has is not sent (reported as a duplicate). Exit status 1 when "
        "any file failed (listed with the reason).",
    )
    up.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    up.add_argument("--include", action="append", default=[], metavar="GLOB",
                    help="only files matching (repeatable), e.g. '*.jpg' or 'raw/*.nef'")
    up.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip files matching (repeatable)")
    up.add_argument("--hidden", action="store_true", help="also files and folders whose name starts with a dot")
    up.add_argument("--library", "-l", help="library id (RAWDRIVE_LIBRARY, default default)")
    up.add_argument("--jobs", "-j", type=_positive, default=4, help="files uploaded at once (default 4)")
    up.add_argument("--protocol", choices=["auto", "tus", "s3"], default="auto",
                    help="auto: tus below --s3-threshold, S3 multipart from it (default auto)")
    up.add_argument("--s3-threshold", type=_size, default=plan.DEFAULT_S3_THRESHOLD, metavar="SIZE",
                    help="size from which auto uses S3 multipart (default 64M)")
    up.add_argument("--part-jobs", type=_positive, default=4, help="S3 parts sent at once per file (default 4)")
    up.add_argument("--limit-rate", type=_size, metavar="SIZE", help="at most SIZE bytes per second in all, e.g. 512k")
    up.add_argument("--no-wait", action="store_true", help="do not wait for processing after the commit")
    up.add_argument("--wait-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="how long to wait for each verdict and for processing (default 600)")
    up.add_argument("--state", dest="state_file", metavar="FILE",
                    help="state file (RAWDRIVE_STATE_FILE, default ~/.local/state/rawdrive/uploads.json)")
    up.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    up.set_defaults(run=cmd_upload)

    ev = commands.add_parser(
        "events", parents=[common], help="the workspace's asset and upload events",
        description="Print the workspace's asset and upload events from JetStream (an ephemeral ordered "
        "consumer: nothing is left on the server). Without --follow: the events since --since (default 15m) "
        "up to now; with --follow: from --since (default now) on, until Ctrl-C.",
    )
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    ev.add_argument("--subject", "-s", action="append", default=[], metavar="SUBJECT",
                    help="asset, upload, asset.created, ... or a full rawdrive.* subject (repeatable)")
    ev.add_argument("--since", metavar="TIME", help="10m, 2h, 1d or an ISO time")
    ev.set_defaults(run=cmd_events)

    dl = commands.add_parser("dlq", help="the dead-letter stream: list, show, replay",
                             description="Messages no consumer could process, with the reason.")
    dl_commands = dl.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dl_commands.add_parser("list", parents=[common], help="every dead letter", description="Every dead letter.")
    for name, text in (("show", "one dead letter and the original message"),
                       ("replay", "republish the original to its subject, then drop the dead letter")):
        action = dl_commands.add_parser(name, parents=[common], help=text, description=text.capitalize() + ".")
        action.add_argument("seq", type=int, help="the dead letter's seq (from list)")
    dl.set_defaults(run=cmd_dlq)

    tk = commands.add_parser(
        "token", parents=[common], help="print a development token",
        description="Print a development token signed with RAWDRIVE_JWT_SECRET (the dev stack's .data/env).",
    )
    tk.add_argument("--role", choices=tokens.ROLES, default="admin", help="default admin")
    tk.add_argument("--ttl", type=_positive, default=tokens.DEFAULT_TTL_S, metavar="SECONDS",
                    help="lifetime (default 86400)")
    tk.add_argument("--sub", default="dev-user", help="the user id (default dev-user)")
    tk.set_defaults(run=cmd_token)

    assets = commands.add_parser("assets", help="list, show, download, delete and restore assets",
                                 description="The workspace's catalogue.")
    a_commands = assets.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    ls = a_commands.add_parser("ls", parents=[common], help="list assets, newest first",
                               description="List assets, newest first (deleted ones only with --status deleted).")
    ls.add_argument("--status", choices=["processing", "available", "failed", "deleted"])
    ls.add_argument("--library", "-l", help="only this library")
    ls.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50, up to 100)")
    ls.add_argument("--cursor", help="the next page (printed under a full page)")
    for name, text in (("get", "one asset with metadata and short-lived variant URLs"),
                       ("rm", "soft delete: restorable until the retention period ends"),
                       ("restore", "undo a delete")):
        action = a_commands.add_parser(name, parents=[common], help=text, description=text.capitalize() + ".")
        action.add_argument("asset_id")
    download = a_commands.add_parser("download", parents=[common], help="download the original",
                                      description="Download the original under its file name.")
    download.add_argument("asset_id")
    download.add_argument("--output", "-o", metavar="PATH", help="file or folder (default: its file name, here)")
    assets.set_defaults(run=cmd_assets)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(args.run(args))
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume")
        return 130
    except (CliError, StateFileError) as error:
        err.print(f"rawdrive: {escape(str(error))}", markup=True)
        return 2
    except GatewayProblem as problem:
        err.print(f"rawdrive: the gateway refused: {escape(str(problem))}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
