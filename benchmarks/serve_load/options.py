"""The command's options: their types (each refuses a bad value in one line), the flags of every mode
and of each, the defaults that differ per mode and with ``--quick``, and the parser."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import __doc__ as USAGE
from .ledger import MIXES

DEFAULTS = {  # option: (default, with --quick)
    "all": {"timeout": (120.0, 30.0), "drain": (120.0, 30.0)},
    "sweep": {"levels": ([1, 4, 16, 64], [1, 4]), "seconds": (30.0, 2.0), "repeats": (5, 2), "repeats_engine": (3, 1)}
    | {"deadline": (1800.0, 180.0)},
    "soak": {"minutes": (10.0, 0.2), "capacity_seconds": (20.0, 3.0), "rss_every": (10.0, 1.0)},
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")  # one line, no usage block


def checked(convert, test, says: str):
    """An argparse type: ``convert`` the text, then refuse what fails ``test`` with ``says``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"{text!r}: {says}")
        return value

    return parse


NUMBER = checked(float, lambda v: 0 < v < float("inf"), "must be a finite number > 0")
COUNT = checked(int, lambda v: v > 0, "must be a whole number > 0")
LEVELS = checked(
    lambda t: [int(p) for p in t.split(",") if p.strip()],
    lambda v: v and all(1 <= c <= 512 for c in v),
    "levels are comma-separated callers, 1 to 512",
)
TAG = checked(str, lambda v: re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", v), "use up to 64 of A-Z a-z 0-9 . _ -")
COMMON = (  # flag, type, help: every mode's options
    ("--url", str, "A ddpm-serve already running on loopback. [default: start one here]"),
    ("--pid", int, "With --url: the server's process id, for its memory and CPU."),
    ("--token", str, "With --url: its bearer token. [default: $DDPM_SERVE_TOKEN]"),
    ("--server-log", str, "Where the started server logs (read for tracebacks). [default: a temp file]"),
    ("--onnx", str, "Passed to ddpm-serve (and used in process for the targets)."),
    ("--model", str, "An embedded model's name, passed to ddpm-serve (and used in process)."),
    ("--max-rows", COUNT, "Passed to ddpm-serve. [default: its own]"),
    ("--queue-rows", COUNT, "Passed to ddpm-serve. [default: its own]"),
    ("--threads", COUNT, "Passed to ddpm-serve and to the in-process model."),
    ("--timeout", NUMBER, "Seconds one request may take. [default: 120; 30 --quick]"),
    ("--deadline", NUMBER, "Hard deadline of the whole mode, seconds."),
    ("--drain", NUMBER, "Seconds a level or the soak waits for its last answers. [default: 120; 30 --quick]"),
    ("--out", Path, "Write serve-load-<mode>-<tag>.json and .md here."),
    ("--tag", TAG, "File tag. [default: a short CPU kind, e.g. xeon-amx]"),
)
SWEEP = (
    ("--levels", LEVELS, "Callers per level. [default: 1,4,16,64; 1,4 --quick]"),
    ("--requests", COUNT, "Requests per level. [default: max(32, 4 x callers); callers --quick]"),
    ("--seconds", NUMBER, "Seconds per level, at most. [default: 30; 2 --quick]"),
    ("--repeats", COUNT, "DDPM.generate(1) runs per kind (median). [default: 5; 2 --quick]"),
    ("--repeats-engine", COUNT, "In-process engine runs (median). [default: 3; 1 --quick]"),
)
SOAK = (
    ("--minutes", NUMBER, "Length of the soak. [default: 10; 0.2 --quick]"),
    ("--rate", NUMBER, "Arrivals per second. [default: --overload x the measured capacity]"),
    ("--capacity-seconds", NUMBER, "Capacity measurement. [default: 20; 3 --quick]"),
    ("--capacity-callers", COUNT, "Callers while measuring capacity. [default: 2 x rows per call, 4 to 64]"),
    ("--rss-every", NUMBER, "Seconds between RSS reads. [default: 10; 1 --quick]"),
)


def parser() -> Parser:
    common = Parser(add_help=False)
    for flag, kind, text in COMMON:
        common.add_argument(flag, type=kind, help=text)
    common.add_argument("--precision", choices=("auto", "fp32", "int8", "bf16"), help="Passed to ddpm-serve.")
    common.add_argument("--mix", choices=sorted(MIXES), default="mixed", help="Request mix (see above).")
    common.add_argument(
        "--quick", action="store_true", help="A very short run (a few seconds a level), for development."
    )
    top = Parser(
        prog="python -m ddpm.benchmarks.serve_load",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = top.add_subparsers(dest="mode", required=True, metavar="MODE")
    sweep = modes.add_parser("sweep", parents=[common], help="Closed loops of 1, 4, 16, 64 callers, targets (a), (b).")
    soak = modes.add_parser("soak", parents=[common], help="Open-loop overload for --minutes, every answer counted.")
    for mode, options in ((sweep, SWEEP), (soak, SOAK)):
        for flag, kind, text in options:
            mode.add_argument(flag, type=kind, help=text)
    sweep.add_argument("--no-targets", dest="targets", action="store_false", help="Skip the in-process figures.")
    soak.add_argument("--overload", type=NUMBER, default=2.0, help="Arrival rate over the measured capacity.")
    soak.add_argument("--max-outstanding", type=COUNT, default=512, help="Requests out at once (uvicorn takes 1024).")
    modes.add_parser("hostile", help="The hostile cases, long: DDPM_HOSTILE_LONG=1 pytest tests/test_serve_hostile.py")
    return top


def settle(opts: argparse.Namespace) -> argparse.Namespace:
    """Per-mode and --quick defaults for what was not given."""
    for name, values in {**DEFAULTS["all"], **DEFAULTS[opts.mode]}.items():
        if getattr(opts, name, None) is None:
            setattr(opts, name, values[opts.quick])
    if opts.deadline is None:  # the soak's: its parts and their drains, with room for starting locust
        opts.deadline = opts.minutes * 60 + opts.capacity_seconds + 3 * opts.drain + 180
    return opts
