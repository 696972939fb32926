"""The cluster step's report: a folder with the 2-D views, the cluster and contingency tables and an
HTML page, written locally from small driver-side frames (the step uploads the folder).

Category names are untrusted (they come from object keys): the page escapes everything it prints, CSV
cells are neutralised and plot labels escaped (`untrusted`).
"""

from __future__ import annotations

import html
import json
import os

import pandas as pd

from .untrusted import csv_cell, plot_label

FIGURES = (  # file, caption, frame ("points": PCA sample, "embedded": t-SNE), x, y, colour
    ("pca_by_fruit.png", "PCA 2-D, coloured by fruit", "points", "pc1", "pc2", "category"),
    ("pca_by_cluster.png", "PCA 2-D, coloured by KMeans cluster", "points", "pc1", "pc2", "cluster"),
    ("tsne_by_fruit.png", "t-SNE of the PCA features, coloured by fruit", "embedded", "tsne1", "tsne2", "category"),
    ("tsne_by_cluster.png", "t-SNE, coloured by KMeans cluster", "embedded", "tsne1", "tsne2", "cluster"),
)


def build(folder: str, *, points: pd.DataFrame, embedded: pd.DataFrame, table: pd.DataFrame, metrics: dict,
          context: dict) -> str:
    """Every report file into `folder`; returns the HTML page's path."""
    frames = {"points": points, "embedded": embedded}
    for name, caption, frame, x, y, colour in FIGURES:
        scatter(frames[frame], x, y, colour, caption, os.path.join(folder, name))
    summary = cluster_summary(table)
    summary.assign(top_fruits=summary["top_fruits"].map(csv_cell)).to_csv(os.path.join(folder, "clusters.csv"),
                                                                           index=False)
    table.rename(index=csv_cell).to_csv(os.path.join(folder, "contingency.csv"))
    views = embedded.drop(columns=["pca"])
    views.assign(key=views["key"].map(csv_cell), category=views["category"].map(csv_cell)).to_csv(
        os.path.join(folder, "views_2d.csv"), index=False, sep=";")
    return write_report(folder, metrics, context, summary, [(name, caption) for name, caption, *_ in FIGURES])



def scatter(points: pd.DataFrame, x: str, y: str, colour_by: str, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(points[colour_by].unique(), key=str)
    cmap = plt.get_cmap("tab20")
    markers = "o^sDv<>p*h"
    fig, ax = plt.subplots(figsize=(9, 7), dpi=100)
    for i, label in enumerate(labels):
        part = points[points[colour_by] == label]
        ax.scatter(part[x], part[y], s=14, color=cmap(i % 20), marker=markers[(i // 20) % len(markers)],
                   label=plot_label(label), alpha=0.8, linewidths=0)
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if len(labels) <= 25:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cluster_summary(table: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    rows = []
    for cluster in table.columns:
        column = table[cluster].sort_values(ascending=False)
        size = int(column.sum())
        fruits = ", ".join(f"{cat} ({int(n)})" for cat, n in column.head(top).items() if n > 0)
        rows.append({"cluster": int(cluster), "size": size,
                     "purity": round(float(column.iloc[0]) / size, 3) if size else 0.0, "top_fruits": fruits})
    return pd.DataFrame(rows).sort_values("cluster")


def write_report(folder: str, metrics: dict, context: dict, summary: pd.DataFrame, figures: list[tuple[str, str]]) -> str:
    metric_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in metrics.items()
    )
    context_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in context.items()
    )
    figure_html = "".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
        "</figcaption></figure>"
        for name, caption in figures
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fruitflow clustering report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}figure{{display:inline-block;margin:0.5em}}
img{{max-width:560px}}</style></head><body>
<h1>fruitflow - clustering report</h1>
<h2>Quality against the folder labels</h2><table>{metric_rows}</table>
<h2>Run</h2><table>{context_rows}</table>
<h2>2-D views</h2>{figure_html}
<h2>Clusters and their top fruits</h2>{summary.to_html(index=False, escape=True)}
</body></html>"""
    path = os.path.join(folder, "index.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
