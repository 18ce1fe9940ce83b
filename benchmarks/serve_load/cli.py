"""The command line: options and their per-mode defaults, a server started here (or one named by
``--url``), the mode run against it, and its report: the machine, the markdown, the problems."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ...core.outputs import write_bytes
from ...runtime.machine import cpu_kind, cpu_name, flag_line
from . import __doc__ as USAGE
from .ledger import MIXES, LoadError, counts, loopback_url
from .modes import run_soak, run_sweep, soak_markdown, sweep_markdown
from .swarm import ServerProcess, Target

MODES = {"sweep": (run_sweep, sweep_markdown), "soak": (run_soak, soak_markdown)}
HOSTILE_TESTS = Path(__file__).resolve().parents[2] / "tests" / "test_serve_hostile.py"
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


def server_log(path: Path | None, returncode: int | None) -> dict | None:
    """The started (or named) server's log: its tracebacks, its exit status and last line."""
    if path is None or not path.is_file():
        return None
    text = path.read_text(errors="replace")
    lines, at = text.strip().splitlines(), text.find("Traceback")
    return {
        "tracebacks": text.count("Traceback"),
        "returncode": returncode,
        "last_line": lines[-1] if lines else "",
        "path": str(path),
        "first_traceback": text[at : at + 600] if at >= 0 else None,
    }


def problems_of(mode: str, result: dict) -> list[str]:
    """What a reader must not miss: lost, duplicated or wrong answers, 5xx or other errors, tracebacks."""
    found = [
        f"{run['level']}: lost {c['lost']}, duplicated {c['duplicated']}, wrong {c['mismatched']}, 429 without "
        f"Retry-After {c['429_without_retry_after']}, other answers {counts(c['unexpected'])}; examples {c['examples']}"
        for run in (result["levels"] if mode == "sweep" else [result["soak"]])
        for c in [run["check"]]
        if not c["clean"]
    ]
    if mode == "soak" and result["healthz_after"]["status"] != 200:
        found.append(f"/healthz after the soak: {result['healthz_after']['status']}")
    if (log := result.get("server_log")) and log["tracebacks"]:
        found.append(f"the server log holds {log['tracebacks']} traceback(s): {log['first_traceback']}")
    return found


def render(opts: argparse.Namespace, result: dict, command: str) -> str:
    info, log, problems = result["machine"], result.get("server_log"), result["problems"]
    lines = [
        f"# ddpm-serve under load: {opts.mode} on {info['cpu']}",
        "",
        f"`{command}`",
        "",
        f"CPU: {info['cpu']}, {info['cores']} cores; flags: {info['flags']}; threads: {info['threads'] or 'default'}"
        f"; model {info['model']} on {info['provider']}; {info['max_rows']} rows per network call; queue rows: "
        f"{info['queue_rows']}; mix {opts.mix} ({MIXES[opts.mix][0]}). Load from locust; latency percentiles are "
        "locust's (nearest rank, 3 significant digits).",
        "",
        *MODES[opts.mode][1](result),
    ]
    if log:
        traceback = f"{log['tracebacks']} TRACEBACK(S)" if log["tracebacks"] else "no traceback"
        lines += ["", f"Server log: {traceback}; exit status {log['returncode']}; last line: {log['last_line']}"]
    lines += ["", "Problems found: " + ("" if problems else "none."), *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None, echo=None) -> tuple[dict, str]:
    """Parse ``argv``, run the mode against a server (started here unless --url), return the result and its markdown."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    opts = settle(parser().parse_args(argv))
    server, returncode, token = None, None, (opts.token or os.environ.get("DDPM_SERVE_TOKEN")) if opts.url else None
    base, pid = (loopback_url(opts.url), opts.pid) if opts.url is not None else (None, None)
    if importlib.util.find_spec("locust") is None:
        raise LoadError("locust is not installed: pip install 'ddpm-mnist[load]'")
    if base is None:
        server = ServerProcess(opts)
        echo(f"starting ddpm-serve {' '.join(server.args)} (log {server.log_path}) ...")
        base, pid = server.start(), server.pid
        echo(f"ddpm-serve listening on {base} (pid {pid})")
    try:
        result = MODES[opts.mode][0](opts, Target(base, token, opts.timeout, pid), echo)
    finally:
        returncode = server.stop() if server is not None else None
    served = result.get("served", {})
    result["machine"] = {
        "cpu": cpu_name(),
        "flags": flag_line(),
        "cores": os.cpu_count(),
        "threads": opts.threads,
        "model": served.get("model"),
        "provider": served.get("provider"),
        "max_rows": served.get("rows_per_call"),
        "queue_rows": opts.queue_rows or "server default",
    }
    result["options"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(opts).items()}
    log_path = server.log_path if server is not None else Path(opts.server_log) if opts.server_log else None
    result["server_log"] = server_log(log_path, returncode)
    result["problems"] = problems_of(opts.mode, result)
    markdown = render(
        opts, result, "python -m ddpm.benchmarks.serve_load " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    if opts.out is not None:
        stem = opts.out / f"serve-load-{opts.mode}-{opts.tag or cpu_kind()}"
        opts.out.mkdir(parents=True, exist_ok=True)
        write_bytes(stem.with_name(stem.name + ".md"), markdown.encode())
        write_bytes(stem.with_name(stem.name + ".json"), (json.dumps(result, indent=2, default=str) + "\n").encode())
        echo(f"wrote {stem}.md and .json")
    return result, markdown


def hostile() -> int:
    """The long hostile cases, which live with the tests: run them as pytest would."""
    if not HOSTILE_TESTS.is_file():
        raise LoadError(f"the hostile cases are a checkout's tests/test_serve_hostile.py, not found at {HOSTILE_TESTS}")
    command = [sys.executable, "-m", "pytest", str(HOSTILE_TESTS), "-q", "-s", "-p", "no:cacheprovider"]
    return subprocess.call(command, cwd=HOSTILE_TESTS.parents[1], env={**os.environ, "DDPM_HOSTILE_LONG": "1"})


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args == ["hostile"]:
            raise SystemExit(hostile())
        _, markdown = run(args)
    except LoadError as exc:
        print(f"serve_load: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    print(markdown)
