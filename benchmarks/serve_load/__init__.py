"""Load on a real ``ddpm-serve`` over loopback: a concurrency sweep, an overload soak, hostile clients.

    python -m ddpm.benchmarks.serve_load sweep --quick                    # a few seconds a level (development)
    python -m ddpm.benchmarks.serve_load sweep --out benchmarks/results   # 1, 4, 16, 64 callers, with the targets
    python -m ddpm.benchmarks.serve_load soak --minutes 10 --out benchmarks/results
    python -m ddpm.benchmarks.serve_load hostile --out benchmarks/results
    python -m ddpm.benchmarks.serve_load sweep --url http://127.0.0.1:8000 --pid 1234   # a server already running

The server is started here as a subprocess on 127.0.0.1 (``--port 0``; ``--max-rows``, ``--queue-rows``,
``--threads``, ``--onnx`` and ``--precision`` are passed through) unless ``--url`` names one that runs;
only loopback addresses are accepted (127.0.0.1, ::1, localhost). Every loop is bounded in count and
in time, and each mode has a hard deadline (``--deadline``) past which requests still out are
cancelled and counted as lost.

Modes:

- ``sweep``: closed loops of 1, 4, 16 and 64 callers (each sends its next request when the previous
  one ends), a fixed number of requests or seconds per level. Per level: digits/s, p50/p99 latency
  (200s only), 429s apart from errors (by status), and rows per network call from the ``/metrics``
  counters' deltas. Targets, reported and never asserted: (a) 16 callers of ``single-digit-20``
  requests reach >= 0.8x the throughput of the engine itself with the same 16 requests submitted at
  once (measured here, in process, with the server's ``max_rows``, while the server is idle), and
  (b) p99 at one caller <= 1.2x ``DDPM.generate(1, plan, seed)`` for the same request (what
  ``ddpm-run`` spends sampling, start-up excluded; median of ``--repeats``).
- ``soak``: ``--minutes`` of open-loop (Poisson) arrivals at ``--overload`` (2) times the capacity
  measured first (or at ``--rate`` requests/s), each with a unique seed. Every request must get
  exactly one answer: a 200 PNG whose ``X-DDPM-Seed`` and PNG ``ddpm.seed`` text are the seed sent,
  or a 429 with ``Retry-After``, answered promptly. The server's resident memory is read every
  ``--rss-every`` s; ``/healthz`` must answer 200 afterwards and the server log must hold no traceback.
- ``hostile``: a background load of normal requests, its latency measured before and during each
  case: malformed JSON, wrong types, huge numbers, NaN, n over the limit, 1,000 digits, deep nesting,
  bad UTF-8, a 1 MB header, 100 MB bodies (declared, chunked, and declared with ``Expect:
  100-continue``; bytes handed to the socket before the answer counted), slow-loris headers and a
  slow body, 500 connections opened and dropped (bare, and after sending a sampling request), and
  requests without or with a wrong bearer token (the server is started with ``DDPM_SERVE_TOKEN``).
  No case may get a 5xx; what the server survives but a reader should know is listed as findings.

Request mixes (``--mix``; default ``mixed`` for sweep and soak, ``single-digit-20`` for the
background of hostile), cycled in a fixed order over the requests of a run:

- ``mixed``: one digit per request: 4 of 9 20-call DPM-Solver++ 2M SDE without a digit (the class
  prior draws one), 4 of 9 the same with a requested digit (classifier-free guidance, 2 rows), 1 of 9
  the 100-step ancestral loop with a digit and no guidance. (The 1000-step loop of the engine's own
  benchmark is too slow for a sweep on a small CPU.)
- ``single-digit-20``: only n=1 requests with a digit (cycling 0-9), guided, 20 DPM-Solver++ 2M SDE calls.
- ``no-digit-20``: only n=1 20-call DPM-Solver++ 2M SDE requests without a digit (one row each).

``--out DIR`` writes ``serve-load-<mode>-<tag>.json`` and ``.md``; the tag defaults to a short CPU
kind (``xeon-amx``, ``epyc-avx512``) and the ``.md`` names the CPU and its flags.
"""
