"""The cluster step's report: a folder with the figures (2-D views, scree plot, contingency heat map),
the cluster and contingency tables, `clusters.json` (each cluster's top fruits and a few member photos),
those photos' thumbnails (`thumbnails.json`) and a self-contained HTML page (`report_page`), written
locally from small driver-side frames (the step uploads the folder).

Category names are untrusted (they come from object keys): the page escapes everything it prints, CSV
cells are neutralised and plot labels escaped (`untrusted`).
"""

from __future__ import annotations

import json
import os

import pandas as pd

from . import report_page
from .untrusted import csv_cell, plot_label

FIGURES = (  # file, caption, frame ("points": PCA sample, "embedded": t-SNE), x, y, colour
    ("pca_by_fruit.png", "PCA 2-D, coloured by fruit", "points", "pc1", "pc2", "category"),
    ("pca_by_cluster.png", "PCA 2-D, coloured by KMeans cluster", "points", "pc1", "pc2", "cluster"),
    ("tsne_by_fruit.png", "t-SNE of the PCA features, coloured by fruit", "embedded", "tsne1", "tsne2", "category"),
    ("tsne_by_cluster.png", "t-SNE, coloured by KMeans cluster", "embedded", "tsne1", "tsne2", "cluster"),
)
SCREE = ("scree.png", "Explained variance per principal component, and cumulative")
HEATMAP = ("contingency.png", "Photos per fruit (rows) and KMeans cluster (columns)")
THUMBNAILS_PER_CLUSTER = 4
LEGEND_MAX_LABELS = 25  # more fruits or clusters than this, and a legend would hide the plot


def figure_files() -> list[tuple[str, str]]:
    """(file, caption) of every figure, in the order the page shows them."""
    return [(name, caption) for name, caption, *_ in FIGURES] + [SCREE, HEATMAP]


def build(folder: str, *, points: pd.DataFrame, embedded: pd.DataFrame, table: pd.DataFrame, metrics: dict,
          context: dict, explained: list[float], fetch_jpegs, make_thumbnails, seed: int = 42) -> str:
    """Every report file into `folder`; returns the HTML page's path. `fetch_jpegs({key: locator})` gives
    the preprocessed JPEGs it could read, as {key: (locator, bytes)} (`points`' `jpeg` column holds each
    photo's locator, `jpeg_packs`); `make_thumbnails({key: bytes})` the thumbnails of those it could
    decode (`report_page.thumbnails`, in the decoder sandbox)."""
    frames = {"points": points, "embedded": embedded}
    for name, caption, frame, x, y, colour in FIGURES:
        scatter(frames[frame], x, y, colour, caption, os.path.join(folder, name))
    scree(explained, SCREE[1], os.path.join(folder, SCREE[0]))
    heatmap(table, HEATMAP[1], os.path.join(folder, HEATMAP[0]))
    summary = cluster_summary(table)
    summary.assign(top_fruits=summary["top_fruits"].map(lambda fruits: csv_cell(
        ", ".join(f"{name} ({n})" for name, n in fruits)))).to_csv(os.path.join(folder, "clusters.csv"), index=False)
    table.rename(index=csv_cell).to_csv(os.path.join(folder, "contingency.csv"))
    views = embedded.drop(columns=["pca", "jpeg"])  # the locators are the store's layout, not a view
    views.assign(key=views["key"].map(csv_cell), category=views["category"].map(csv_cell)).to_csv(
        os.path.join(folder, "views_2d.csv"), index=False, sep=";")
    members = thumbnail_keys(points, THUMBNAILS_PER_CLUSTER, seed)
    locators = dict(zip(points["key"], points["jpeg"]))
    found = fetch_jpegs({k: locators[k] for k in sorted({k for keys in members.values() for k in keys})
                         if isinstance(locators.get(k), str)})
    clusters = [{**row, "thumbnails": [k for k in members.get(row["cluster"], []) if k in found]}
                for row in summary.to_dict("records")]
    document = {"clusters": clusters, "figures": figure_files()}
    with open(os.path.join(folder, "clusters.json"), "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=1)
    thumbnails = make_thumbnails({k: data for k, (_, data) in found.items()})
    with open(os.path.join(folder, report_page.THUMBNAILS_FILE), "w", encoding="utf-8") as fh:
        fh.write(report_page.thumbnails_json(thumbnails))
    page = report_page.render(
        quality=metrics, clusters=clusters, context=context,
        figures=[(caption, _read(os.path.join(folder, name))) for name, caption in figure_files()],
        thumbnails=thumbnails)
    path = os.path.join(folder, "index.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def thumbnail_keys(points: pd.DataFrame, per_cluster: int, seed: int) -> dict[int, list[str]]:
    """A few member keys per cluster, a seeded random choice among the sampled points."""
    shuffled = points[["key", "cluster"]].sample(frac=1.0, random_state=seed)
    return {int(c): list(group["key"].head(per_cluster)) for c, group in shuffled.groupby("cluster")}


def scatter(points: pd.DataFrame, x: str, y: str, colour_by: str, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(points[colour_by].unique(), key=str)
    cmap = plt.get_cmap("tab20")
    markers = "o^sDv<>p*h"
    fig, ax = plt.subplots(figsize=(9, 7), dpi=100)
    style = {"s": 14, "alpha": 0.8, "linewidths": 0}
    if len(labels) <= LEGEND_MAX_LABELS:  # one series per label, for the legend
        for i, label in enumerate(labels):
            part = points[points[colour_by] == label]
            ax.scatter(part[x], part[y], color=cmap(i % 20), marker=markers[(i // 20) % len(markers)],
                       label=plot_label(label), **style)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    else:  # no legend: one series per marker, each point its label's colour (a series per label cost seconds)
        code = points[colour_by].map({label: i for i, label in enumerate(labels)}).to_numpy()
        for m, marker in enumerate(markers):
            part = (code // 20) % len(markers) == m
            if part.any():
                ax.scatter(points[x].to_numpy()[part], points[y].to_numpy()[part], color=cmap(code[part] % 20),
                           marker=marker, **style)
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scree(explained: list[float], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    components = np.arange(1, len(explained) + 1)
    ax.bar(components, explained, color="#4c72b0", label="per component")
    ax.plot(components, np.cumsum(explained), color="#dd8452", marker="o", label="cumulative")
    ax.set_ylim(0, 1)
    ax.set_xlabel("principal component")
    ax.set_ylabel("share of the variance")
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heatmap(table: pd.DataFrame, title: str, path: str, max_labels: int = 60) -> None:
    """The contingency table as an image; fruit names (escaped for mathtext) when there are few enough."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = table.shape
    fig, ax = plt.subplots(figsize=(min(16, 4 + 0.25 * cols), min(20, 3 + 0.22 * rows)), dpi=100)
    shown = ax.imshow(table.to_numpy(), cmap="Blues", aspect="auto", interpolation="nearest")
    if rows <= max_labels:
        ax.set_yticks(range(rows), [plot_label(name) for name in table.index], fontsize=7)
    if cols <= max_labels:
        ax.set_xticks(range(cols), [str(c) for c in table.columns], fontsize=7)
    ax.set_xlabel("cluster")
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, shrink=0.6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cluster_summary(table: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """cluster, size, purity, top_fruits ([name, count] of its most frequent fruits)."""
    rows = []
    for cluster in table.columns:
        column = table[cluster].sort_values(ascending=False)
        size = int(column.sum())
        fruits = [[str(cat), int(n)] for cat, n in column.head(top).items() if n > 0]
        rows.append({"cluster": int(cluster), "size": size,
                     "purity": round(float(column.iloc[0]) / size, 3) if size else 0.0, "top_fruits": fruits})
    return pd.DataFrame(rows).sort_values("cluster")
