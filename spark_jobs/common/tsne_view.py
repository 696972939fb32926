"""The cluster report's t-SNE view: drawn afresh, or an earlier run's carried over with new photos placed
among their nearest neighbours, and the JSON it is kept in between runs (no Spark here: the cluster step
reads and writes the file).

The view's file was written where the Spark nodes can write: `parse` takes nothing but a list of keys
and as many finite (x, y) places.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors

CARRIED_MIN_SHARE = 0.8  # of the photos in view, kept in the earlier view, else the view is redrawn
NEIGHBOURS = 10


def drawn(subset: pd.DataFrame, x: np.ndarray, seed: int) -> pd.DataFrame:
    """`subset` with its t-SNE places (tsne1, tsne2), from its vectors `x` (one row each)."""
    if len(x) < 5:
        return subset.assign(tsne1=0.0, tsne2=0.0)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    embedded = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    return subset.assign(tsne1=embedded[:, 0], tsne2=embedded[:, 1])


def carried(subset: pd.DataFrame, x: np.ndarray, kept: pd.DataFrame, min_share: float = CARRIED_MIN_SHARE,
            neighbours: int = NEIGHBOURS):
    """`subset` placed in an earlier run's view `kept` (key, tsne1, tsne2): the photos it holds where it put
    them, each other one at the median place of its `neighbours` nearest such photos by their vectors `x`
    (how openTSNE starts placing new points in an embedding); and how many were placed. None when `kept`
    holds under `min_share` of `subset`: a view that would be mostly placed points."""
    merged = subset.merge(kept.drop_duplicates("key"), on="key", how="left")
    known = merged["tsne1"].notna().to_numpy()
    if not len(merged) or known.sum() < max(min_share * len(merged), min(neighbours, len(merged))):
        return None
    placed = ~known
    if placed.any():
        search = NearestNeighbors(n_neighbors=min(neighbours, int(known.sum()))).fit(x[known])
        _, nearest = search.kneighbors(x[placed])
        where = merged.loc[known, ["tsne1", "tsne2"]].to_numpy()
        merged.loc[placed, ["tsne1", "tsne2"]] = np.median(where[nearest], axis=1)
    return merged, int(placed.sum())


def to_json(view: pd.DataFrame) -> str:
    """The view as the next run reads it (`parse`)."""
    return json.dumps({"keys": view["key"].tolist(), "tsne": view[["tsne1", "tsne2"]].to_numpy(dtype=float).tolist()})


def parse(body: bytes | str) -> pd.DataFrame:
    """A kept view (key, tsne1, tsne2); a ValueError for anything but keys and as many finite places."""
    document = json.loads(body)
    keys = document.get("keys") if isinstance(document, dict) else None
    places = np.asarray(document.get("tsne") if isinstance(document, dict) else [], dtype=float)
    if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            or places.shape != (len(keys), 2) or not np.isfinite(places).all()):
        raise ValueError("the t-SNE view is not a list of keys and as many finite (x, y) places")
    return pd.DataFrame({"key": keys, "tsne1": places[:, 0], "tsne2": places[:, 1]})
