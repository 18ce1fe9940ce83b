"""The command line (its options in options.py): a server started here (or one named by
``--url``), the mode run against it, and its report: the machine, the markdown, the problems."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from ...core.outputs import write_bytes
from ...runtime.machine import cpu_kind, cpu_name, flag_line
from .ledger import MIXES, LoadError, counts, loopback_url
from .modes import run_soak, run_sweep, soak_markdown, sweep_markdown
from .options import parser, settle
from .swarm import ServerProcess, Target

MODES = {"sweep": (run_sweep, sweep_markdown), "soak": (run_soak, soak_markdown)}
HOSTILE_TESTS = Path(__file__).resolve().parents[2] / "tests" / "test_serve_hostile.py"


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
