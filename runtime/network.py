"""The network calls of a sampling tick: gathered rows in, ε (or a fused step's x_{t−1}) out.

Rows may belong to different requests at different timesteps (``t`` is [B]). They are evaluated
in calls of at most ``max_rows`` rows; a fixed-batch model gets its last call padded to its size.
With ``binding`` the calls go through IOBinding (device buffers refreshed in place, which a
CUDA-graph session replays); otherwise through ``session.run`` with NumPy arrays.
"""

from __future__ import annotations

import numpy as np

from .session import BoundEps, BoundStep, UNetSession


class Network:
    """ε(x, t, y) for any number of rows, in calls of at most ``max_rows`` rows."""

    def __init__(self, session: UNetSession, max_rows: int, binding: bool = False) -> None:
        self.session = session
        self.max_rows = session.fixed_batch or max_rows
        self.binding = binding
        self.calls = 0  # network calls made
        self.rows = 0  # real (unpadded) rows evaluated
        self._bound_eps: dict[int, BoundEps] = {}
        self._bound_steps: list[BoundStep] = []

    def _chunks(self, rows: int):
        """(start, count, padded size) of each call; a fixed-batch model pads the last one."""
        for start in range(0, rows, self.max_rows):
            count = min(self.max_rows, rows - start)
            yield start, count, self.max_rows if self.session.fixed_batch is not None else count

    @staticmethod
    def _pad(array: np.ndarray, size: int) -> np.ndarray:
        if len(array) == size:
            return np.ascontiguousarray(array)
        return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])

    def eps(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        """ε for rows x [R,C,H,W] at timesteps t [R] with labels y [R] (None: an unconditional model)."""
        eps = np.empty_like(x)
        for start, count, size in self._chunks(len(x)):
            chunk, times = self._pad(x[start : start + count], size), self._pad(t[start : start + count], size)
            labels = None if y is None else self._pad(y[start : start + count], size)
            if not self.binding:
                result = self.session.eps(chunk, times, labels)
            else:
                if size not in self._bound_eps:
                    self._bound_eps[size] = BoundEps(self.session, size)
                result = self._bound_eps[size](chunk, times, labels)
            eps[start : start + count] = result[:count]
            self.calls, self.rows = self.calls + 1, self.rows + count
        return eps

    def fused_step(self, x: np.ndarray, t: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """x_{t−1} from a fused-step graph (x, t, noise → x_prev) for rows at timesteps t."""
        result = np.empty_like(x)
        for index, (start, count, size) in enumerate(self._chunks(len(x))):
            rows, times = self._pad(x[start : start + count], size), self._pad(t[start : start + count], size)
            chunk_noise = self._pad(noise[start : start + count], size)
            if self.binding:
                if index == len(self._bound_steps):
                    self._bound_steps.append(BoundStep(self.session, rows, slot=index))
                out = self._bound_steps[index].run(rows, times, chunk_noise)
            else:
                out = self.session.run("x_prev", {"x": rows, "t": times, "noise": chunk_noise})
            result[start : start + count] = out[:count]
            self.calls, self.rows = self.calls + 1, self.rows + count
        return result
