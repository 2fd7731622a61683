"""K-means trajectory anchors (the modes the truncated diffusion planner starts from)."""

from __future__ import annotations

import numpy as np


def kmeans_anchors(trajectories: np.ndarray, k: int = 20, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """Cluster future trajectories ``(M, 8, 2+)`` into ``k`` anchors ``(k, 8, 2)`` (x, y in metres).

    K-means++ initialisation with a seeded generator, then Lloyd iterations on the flattened (x, y)
    waypoints; an empty cluster is re-seeded with the point farthest from its centre. The same data
    and seed give the same anchors.
    """
    x = np.asarray(trajectories, dtype=np.float64)[..., :2].reshape(len(trajectories), -1)
    if len(x) < k:
        raise ValueError(f"need at least {k} trajectories for {k} anchors, got {len(x)}")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
        centres.append(x[rng.choice(len(x), p=probs)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(iterations):
        dist = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        label = dist.argmin(1)
        new = np.stack([x[label == j].mean(0) if np.any(label == j) else c[j] for j in range(k)])
        for j in np.flatnonzero(np.bincount(label, minlength=k) == 0):
            new[j] = x[dist.min(1).argmax()]
        if np.allclose(new, c):
            break
        c = new
    order = np.lexsort((c[:, -1], c[:, -2]))  # deterministic order: by final x, then final y
    return c[order].reshape(k, -1, 2)
