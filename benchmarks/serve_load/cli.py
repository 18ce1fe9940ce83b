"""The command line: the options and their per-mode defaults, a server started here (or one named by
``--url``), the mode run against it, and its problems, findings and markdown written out."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
from pathlib import Path

from ...core.outputs import write_bytes
from . import __doc__ as USAGE
from .client import MIXES, LoadError, Target, loopback_url, short_cpu_kind
from .hostile import run_hostile
from .report import findings_of, machine, problems_of, render
from .server import ServerProcess
from .soak import run_soak
from .sweep import run_sweep

MODES = {"sweep": run_sweep, "soak": run_soak, "hostile": run_hostile}


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not levels or any(level < 1 or level > 512 for level in levels):
        raise argparse.ArgumentTypeError(f"{text!r}: levels are 1 to 512 callers")
    return levels


def _tag(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use up to 64 letters, digits, '.', '_' or '-', not starting with '.'")
    return text


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="A ddpm-serve already running on loopback. [default: start one here]")
    common.add_argument("--pid", type=int, default=None, help="With --url: the server's process id, for its memory and CPU.")
    common.add_argument("--token", default=None, help="With --url: its bearer token. [default: $DDPM_SERVE_TOKEN]")
    common.add_argument("--server-log", default=None, help="Where the started server logs (read for tracebacks). [default: a temp file]")
    common.add_argument("--onnx", default=None, help="Passed to ddpm-serve (and used in process for the targets).")
    common.add_argument("--precision", default=None, choices=("auto", "fp32", "int8"), help="Passed to ddpm-serve.")
    common.add_argument("--max-rows", type=int, default=None, help="Passed to ddpm-serve. [default: its own]")
    common.add_argument("--queue-rows", type=int, default=None, help="Passed to ddpm-serve. [default: its own]")
    common.add_argument("--threads", type=int, default=None, help="Passed to ddpm-serve and to the in-process model.")
    common.add_argument("--mix", choices=sorted(MIXES), default=None,
                        help="Request mix (see the module's help). [default: mixed; single-digit-20 for hostile's background]")
    common.add_argument("--timeout", type=float, default=None, help="Seconds one request may take. [default: 120; 30 --quick]")
    common.add_argument("--deadline", type=float, default=None, help="Hard deadline of the whole mode, seconds.")
    common.add_argument("--drain", type=float, default=None, help="Seconds a level or the soak waits for its last answers.")
    common.add_argument("--quick", action="store_true", help="A very short run (a few seconds a level or case), for development.")
    common.add_argument("--out", type=Path, default=None, help="Write serve-load-<mode>-<tag>.json and .md here.")
    common.add_argument("--tag", type=_tag, default=None, help="File tag. [default: a short CPU kind, e.g. xeon-amx]")
    top = argparse.ArgumentParser(prog="python -m ddpm.benchmarks.serve_load", description=USAGE,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = top.add_subparsers(dest="mode", required=True, metavar="MODE")
    sweep = modes.add_parser("sweep", parents=[common], help="Closed loops of 1, 4, 16, 64 callers, with targets (a) and (b).")
    sweep.add_argument("--levels", type=_levels, default=None, help="Callers per level. [default: 1,4,16,64; 1,4 --quick, beside the target levels]")
    sweep.add_argument("--requests", type=int, default=None, help="Requests per level. [default: max(32, 4 x callers); callers --quick]")
    sweep.add_argument("--seconds", type=float, default=None, help="Seconds per level, at most. [default: 30; 2 --quick]")
    sweep.add_argument("--no-targets", dest="targets", action="store_false", help="Skip the in-process figures and target levels.")
    sweep.add_argument("--repeats", type=int, default=None, help="DDPM.generate(1) runs per kind (median). [default: 5; 2 --quick]")
    sweep.add_argument("--repeats-engine", type=int, default=None, help="In-process engine runs (median). [default: 3; 1 --quick]")
    soak = modes.add_parser("soak", parents=[common], help="Open-loop overload for --minutes, every answer accounted for.")
    soak.add_argument("--minutes", type=float, default=None, help="Length of the soak. [default: 10; 0.2 --quick]")
    soak.add_argument("--rate", type=float, default=None, help="Arrivals per second. [default: --overload x the measured capacity]")
    soak.add_argument("--overload", type=float, default=2.0, help="Arrival rate over the measured capacity.")
    soak.add_argument("--capacity-seconds", type=float, default=None, help="Capacity measurement. [default: 20; 3 --quick]")
    soak.add_argument("--capacity-callers", type=int, default=None,
                      help="Closed-loop callers while measuring capacity. [default: 2 x rows per call, 4 to 64]")
    soak.add_argument("--rss-every", type=float, default=None, help="Seconds between RSS reads. [default: 10; 1 --quick]")
    soak.add_argument("--max-outstanding", type=int, default=512, help="Requests out at once, at most (uvicorn takes 1024 connections).")
    hostile = modes.add_parser("hostile", parents=[common], help="Hostile clients beside a background of normal requests.")
    hostile.add_argument("--background", type=int, default=2, help="Callers of the normal background load.")
    hostile.add_argument("--before", type=float, default=None, help="Seconds of background before the cases. [default: 15; 3 --quick]")
    hostile.add_argument("--case-seconds", type=float, default=None, help="Seconds each repeated case lasts. [default: 3; 1 --quick]")
    hostile.add_argument("--loris", type=int, default=50, help="Slow-loris connections.")
    hostile.add_argument("--loris-seconds", type=float, default=None, help="How long they trickle. [default: 30; 4 --quick]")
    hostile.add_argument("--drops", type=int, default=500, help="Connections opened and dropped at once.")
    hostile.add_argument("--big-mb", type=int, default=100, help="Size of the oversized bodies, MB.")
    return top


def settle(opts: argparse.Namespace) -> argparse.Namespace:
    """Per-mode and --quick defaults for what was not given."""
    quick = opts.quick

    def default(name: str, normal, short) -> None:
        if getattr(opts, name, None) is None:
            setattr(opts, name, short if quick else normal)

    default("timeout", 120.0, 30.0)
    default("drain", 120.0, 30.0)
    if opts.mode == "sweep":
        default("mix", "mixed", "mixed")
        default("levels", [1, 4, 16, 64], [1, 4])
        default("seconds", 30.0, 2.0)
        default("repeats", 5, 2)
        default("repeats_engine", 3, 1)
        default("deadline", 1800.0, 180.0)
    elif opts.mode == "soak":
        default("mix", "mixed", "mixed")
        default("minutes", 10.0, 0.2)
        default("capacity_seconds", 20.0, 3.0)
        default("rss_every", 10.0, 1.0)
        default("deadline", opts.minutes * 60 + opts.capacity_seconds + 2 * opts.drain + 120, opts.minutes * 60 + 90)
    else:
        default("mix", "single-digit-20", "single-digit-20")
        default("before", 15.0, 3.0)
        default("case_seconds", 3.0, 1.0)
        default("loris_seconds", 30.0, 4.0)
        default("deadline", 900.0, 240.0)
    for name in ("timeout", "deadline", "drain"):
        if getattr(opts, name) <= 0:
            raise LoadError(f"--{name} must be > 0")
    return opts


async def _run(mode: str, opts: argparse.Namespace, target: Target, echo) -> dict:
    return await MODES[mode](opts, target, echo)


def run(argv: list[str] | None = None, echo=None) -> tuple[dict, str]:
    """Parse ``argv``, run the mode against a server (started here unless --url), return the result and its markdown."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    opts = settle(parser().parse_args(argv))
    command = "python -m ddpm.benchmarks.serve_load " + " ".join(argv if argv is not None else sys.argv[1:])
    token = None
    if opts.mode == "hostile" and opts.url is None:
        token = secrets.token_urlsafe(24)
    elif opts.url is not None:
        token = opts.token or os.environ.get("DDPM_SERVE_TOKEN")
    server = None
    if opts.url is not None:
        base, pid = loopback_url(opts.url), opts.pid
    else:
        server = ServerProcess(opts, token)
        echo(f"starting ddpm-serve {' '.join(server.args)} (log {server.log_path}) ...")
        base = server.start()
        pid = server.pid
        echo(f"ddpm-serve listening on {base} (pid {pid})")
    target = Target(base, {"authorization": f"Bearer {token}"} if token else {}, opts.timeout, pid, token)
    try:
        result = asyncio.run(_run(opts.mode, opts, target, echo))
    finally:
        if server is not None:
            server.stop()
    result["machine"] = machine(opts, result.get("served", {}))
    result["options"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(opts).items()}
    log_text = server.log_text() if server is not None else (Path(opts.server_log).read_text(errors="replace")
                                                             if opts.server_log and Path(opts.server_log).is_file() else None)
    if log_text is not None:
        lines = log_text.strip().splitlines()
        at = log_text.find("Traceback")
        result["server_log"] = {"tracebacks": log_text.count("Traceback"), "returncode": None if server is None else server.returncode,
                                "last_line": lines[-1] if lines else "", "path": str(server.log_path if server else opts.server_log),
                                "first_traceback": log_text[at:at + 600] if at >= 0 else None}
    result["problems"] = problems_of(opts.mode, result)
    result["findings"] = findings_of(opts.mode, result)
    markdown = render(opts.mode, opts, result, command)
    if opts.out is not None:
        tag = opts.tag or short_cpu_kind()
        opts.out.mkdir(parents=True, exist_ok=True)
        write_bytes(opts.out / f"serve-load-{opts.mode}-{tag}.md", markdown.encode())
        write_bytes(opts.out / f"serve-load-{opts.mode}-{tag}.json", (json.dumps(result, indent=2, default=str) + "\n").encode())
        echo(f"wrote {opts.out / f'serve-load-{opts.mode}-{tag}'}.md and .json")
    return result, markdown


def main(argv: list[str] | None = None) -> None:
    try:
        _, markdown = run(argv)
    except LoadError as exc:
        print(f"serve_load: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    print(markdown)
