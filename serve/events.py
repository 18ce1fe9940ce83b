"""``/v1/jobs/{id}/events``: a job's progress as server-sent events.

Events, each ``data`` one JSON object:

- ``progress``: ``{"state", "position", "steps"}``, whenever the position moved;
- ``frame``: ``{"index", "timestep", "png"}``, each frame as it is made (a base64 PNG grid, one
  pixel per pixel; timestep −1 is the pure noise);
- ``end``: the job's view (state ``done``, ``failed`` or ``cancelled``, and ``error``), last.

A client that leaves stops its stream, not its job (``DELETE`` cancels a job).
"""

from __future__ import annotations

import asyncio
import base64
import json

from fastapi import Request
from fastapi.responses import StreamingResponse

from .jobs import ServedJob

POLL = 0.05  # seconds between looks at the job
KEEPALIVE = 15.0  # seconds of silence after which a comment line keeps proxies from closing the stream


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(request: Request, served: ServedJob):
    job, jobs = served.job, request.app.state.jobs
    sent_frames, sent_position, quiet = 0, -1, 0.0
    while True:
        done = job.done  # read first: frames and position are final once it is set
        while sent_frames < len(job.frames):
            png = await asyncio.to_thread(jobs.frame_png, served, sent_frames)
            yield _event(
                "frame",
                {
                    "index": sent_frames,
                    "timestep": job.frame_timesteps[sent_frames],
                    "png": base64.b64encode(png).decode(),
                },
            )
            sent_frames += 1
        if job.position != sent_position:
            sent_position, quiet = job.position, 0.0
            yield _event("progress", {"state": job.state, "position": job.position, "steps": job.steps})
        if done:
            yield _event("end", served.view().model_dump())
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL)
        quiet += POLL
        if quiet >= KEEPALIVE:
            quiet = 0.0
            yield b": waiting\n\n"


def response(request: Request, served: ServedJob) -> StreamingResponse:
    return StreamingResponse(
        _events(request, served),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
