"""What the load generator sends and how it accounts for the answers: request kinds and mixes, the
loopback guard, the ledger of seeds sent and answered, rows per network call from /metrics. Free of
locust, so that the command and the locust process both import it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class LoadError(Exception):
    """A one-line reason the load generator cannot run."""


def loopback_url(url: str) -> str:
    """``url`` reduced to ``http://host:port`` if it names this machine's loopback; else LoadError."""
    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.hostname
    except ValueError as exc:
        raise LoadError(f"--url {url!r}: {exc}") from None
    if parts.scheme != "http":
        raise LoadError(f"--url {url!r}: only plain http on loopback is load-tested, not {parts.scheme or 'none'!r}")
    if host not in LOOPBACK_HOSTS or parts.username is not None or parts.password is not None:
        hosts = ", ".join(LOOPBACK_HOSTS)
        raise LoadError(f"--url {url!r}: this load generator talks only to loopback ({hosts}), not {host!r}")
    return f"http://{f'[{host}]' if ':' in host else host}:{port or 80}"


@dataclass(frozen=True)
class Kind:
    """One kind of request: n=1, a sampler and its calls, with a requested digit (0-9 in turn) or without."""

    name: str
    sampler: str
    steps: int
    digit: bool
    guidance: float | None = None  # None: the server's default (guided with a digit)

    def body(self, index: int, seed: int) -> dict[str, Any]:
        body = {"n": 1, "sampler": self.sampler, "steps": self.steps, "seed": seed, "guidance": self.guidance}
        return {k: v for k, v in body.items() if v is not None} | ({"digits": [index % 10]} if self.digit else {})

    def plan(self, ddpm, index: int):
        digits = [index % 10] if self.digit else None
        return ddpm.plan(self.sampler, steps=self.steps, digits=digits, guidance=self.guidance)


KINDS = {
    kind.name: kind
    for kind in (
        Kind("sde20", "dpm++2m-sde", 20, digit=False),
        Kind("sde20-digit", "dpm++2m-sde", 20, digit=True),
        Kind("ancestral100-digit", "ancestral", 100, digit=True, guidance=0.0),
        Kind("consistency2-digit", "consistency", 2, digit=True),  # a few-step student's, its guidance built in
    )
}
TARGET_KIND = "sde20-digit"  # the single-digit 20-call request of the targets
MIXES: dict[str, tuple[str, tuple[str, ...]]] = {  # name: (what it is, the kinds it cycles through)
    "mixed": (
        "4/9 20-call dpm++2m-sde without a digit, 4/9 the same with a digit (guided), "
        "1/9 100-step ancestral with a digit (unguided)",
        ("sde20", "sde20-digit") * 4 + ("ancestral100-digit",),
    ),
    "single-digit-20": ("n=1 with a digit (0-9 in turn), guided, 20 dpm++2m-sde calls", ("sde20-digit",)),
    "no-digit-20": ("n=1 without a digit, 20 dpm++2m-sde calls", ("sde20",)),
    "student-2": (
        "n=1 with a digit (0-9 in turn), 2 consistency calls: few-step students only",
        ("consistency2-digit",),
    ),
}


def mix_kind(mix: str, index: int) -> Kind:
    return KINDS[MIXES[mix][1][index % len(MIXES[mix][1])]]


class Ledger:
    """Every seed sent (each request has its own) and every answer. Each request must get exactly one:
    a 200 PNG whose ``X-DDPM-Seed`` and PNG ``ddpm.seed`` are its seed, or a 429 with ``Retry-After``."""

    def __init__(self) -> None:
        self.sent: set[int] = set()
        self.answers: list[dict[str, Any]] = []

    def send(self, seed: int) -> None:
        if seed in self.sent:
            raise ValueError(f"seed {seed} sent twice")
        self.sent.add(seed)

    def answer(self, seed: int, status: int | None, **facts: Any) -> None:
        """``status`` None: no HTTP answer came (``error`` says why). ``facts``: ``header_seed``,
        ``png_seed``, ``is_png`` of a 200, ``retry_after`` of a 429, ``detail`` of another status."""
        empty = {"error": "", "detail": "", "header_seed": None, "png_seed": None, "is_png": False, "retry_after": None}
        self.answers.append({**empty, **facts, "seed": seed, "status": status})

    def check(self) -> dict[str, Any]:
        """Counts of what went wrong; ``clean`` when each request got exactly one right answer."""
        answered = Counter(a["seed"] for a in self.answers if a["status"] is not None)
        lost = sorted(seed for seed in self.sent if not answered[seed])
        twice = [seed for seed, count in Counter(a["seed"] for a in self.answers).items() if count > 1]
        strangers = {a["seed"] for a in self.answers} - self.sent
        ok = [a for a in self.answers if a["status"] == 200]
        claims = Counter(a["header_seed"] for a in ok if a["header_seed"] is not None)
        duplicated = sorted(seed for seed, count in claims.items() if count > 1)  # one digit handed to two requests
        right = lambda a: a["is_png"] and a["header_seed"] == a["seed"] == a["png_seed"]  # noqa: E731
        wrong = [a for a in ok if a["seed"] in self.sent and not right(a)]
        refused = [a for a in self.answers if a["status"] == 429]
        bare_429 = [a for a in refused if not str(a["retry_after"] or "").strip().isdigit()]
        others = [a for a in self.answers if a["status"] not in (200, 429)]
        label = lambda a: str(a["status"]) if a["status"] else f"no response ({a['error'].split(':')[0]})"  # noqa: E731
        examples = {
            "lost": lost[:5],
            "duplicated_seeds": duplicated[:5],
            "mismatched": [{k: a[k] for k in ("seed", "header_seed", "png_seed", "is_png")} for a in wrong[:5]],
            "unexpected": {label(a): a["detail"] or a["error"] for a in others},
        }
        return {
            "sent": len(self.sent),
            "answered": sum(answered.values()),
            "ok": len(ok),
            "refused": len(refused),
            "lost": len(lost),
            "duplicated": len(duplicated) + len(twice),
            "mismatched": len(wrong),
            "strangers": len(strangers),
            "429_without_retry_after": len(bare_429),
            "unexpected": dict(Counter(label(a) for a in others)),
            "clean": not (lost or duplicated or twice or wrong or strangers or bare_429 or others),
            "examples": {key: value for key, value in examples.items() if value},
        }


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text as {sample name with its labels, as written: value}; {} for anything else."""
    from prometheus_client.parser import text_string_to_metric_families

    labels = lambda s: "{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}" if s.labels else ""  # noqa: E731
    try:
        return {s.name + labels(s): s.value for family in text_string_to_metric_families(text) for s in family.samples}
    except ValueError:
        return {}


def rows_per_call(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Mean rows per network call between two scrapes (the rows and calls counters' deltas)."""
    names = ("ddpm_network_rows_total", "ddpm_network_calls_total")
    if any(name not in values for name in names for values in (before, after)):
        return None
    rows, calls = (after[name] - before[name] for name in names)
    return rows / calls if calls > 0 else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def counts(found: dict) -> str:
    return ", ".join(f"{key} x{value}" for key, value in found.items()) or "0"
