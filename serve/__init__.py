"""Serving layer of ddpm-mnist: the runtime's batching engine behind an HTTP API (``ddpm-serve``),
its page, and scale-out on Ray Serve. Needs the ``serve`` extra (and ``ray`` for Ray)."""
