"""The run report as one self-contained HTML page (every image inline), rendered with Jinja2.

The cluster step renders it with what it knows (quality, figures, clusters with thumbnails); the DAG's
`publish` task renders it again for the whole run, adding the classifier and the timings, and the
Airflow plugin serves that page. No Spark here: the Airflow side imports this module.

Everything printed comes through Jinja2's autoescape: category names and keys come from object keys
and are untrusted.
"""

from __future__ import annotations

import base64
import io
import json

import jinja2

THUMBNAIL_PX = 96
# The member photos' thumbnails as the cluster step made them (in its decoder sandbox), key -> base64 JPEG,
# a file of its report folder: the run report embeds them as the step's signed manifest vouches for them,
# and decodes no photo of its own
THUMBNAILS_FILE = "thumbnails.json"

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fruitflow report{% if run_id %} - {{ run_id }}{% endif %}</title>
<style>
body{font-family:sans-serif;margin:1.5em;max-width:1250px;color:#222}
table{border-collapse:collapse;margin:0.8em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
figure{display:inline-block;margin:0.4em}
figure img{max-width:580px}
.thumbs img{width:{{ thumbnail_px }}px;height:{{ thumbnail_px }}px;margin-right:3px}
.muted{color:#777}
</style></head><body>
<h1>fruitflow report</h1>
{% if run_id %}<p class="muted">run {{ run_id }}</p>{% endif %}
<h2>Quality against the folder labels</h2>
<table id="quality">{% for name, value in quality %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
{% if classifier %}
<h2>Classifier (held-out photos)</h2>
<table id="classifier">{% for name, value in classifier.figures %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
{% if classifier.confused %}<p>Most confused:</p><table id="confused"><tr><th>fruit</th><th>taken for</th><th>photos</th></tr>
{% for pair in classifier.confused %}<tr><td>{{ pair.category }}</td><td>{{ pair.predicted }}</td><td>{{ pair.count }}</td></tr>{% endfor %}</table>{% endif %}
{% endif %}
<h2>Clusters</h2>
<table id="clusters"><tr><th>cluster</th><th>size</th><th>purity</th><th>top fruits</th><th>photos</th></tr>
{% for c in clusters %}<tr class="cluster"><td>{{ c.cluster }}</td><td>{{ c.size }}</td><td>{{ c.purity }}</td>
<td>{% for name, n in c.top_fruits %}{{ name }} ({{ n }}){% if not loop.last %}, {% endif %}{% endfor %}</td>
<td class="thumbs">{% for t in c.thumbnails %}<img src="data:image/jpeg;base64,{{ t.data }}" alt="{{ t.key }}" title="{{ t.key }}">{% endfor %}</td></tr>
{% endfor %}</table>
<h2>Figures</h2>
{% for f in figures %}<figure><img src="data:image/png;base64,{{ f.data }}" alt="{{ f.caption }}"><figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}
<h2>Run</h2>
<table id="run">{% for name, value in context %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
</body></html>
"""


def _environment() -> jinja2.Environment:
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def thumbnail(jpeg: bytes, px: int = THUMBNAIL_PX) -> bytes:
    """A small JPEG of a preprocessed image (the pipeline's own 224x224 output)."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as img:
        small = img.convert("RGB").resize((px, px))
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=85)
        return out.getvalue()


def thumbnails_json(made: dict[str, bytes]) -> str:
    return json.dumps({key: encode(data) for key, data in made.items()})


def parse_thumbnails(text: bytes | str) -> dict[str, bytes]:
    """`thumbnails_json`'s thumbnails back; ValueError for anything else."""
    document = json.loads(text)
    if not isinstance(document, dict) or not all(isinstance(v, str) for v in document.values()):
        raise ValueError(f"{THUMBNAILS_FILE} is not an object of base64 strings")
    return {str(key): base64.b64decode(value, validate=True) for key, value in document.items()}


def thumbnails(jpegs: dict[str, bytes], *, memory_bytes: int, timeout_s: float) -> dict[str, bytes]:
    """`thumbnail` of each photo, made in the decoder sandbox (the photos are the preprocessed JPEGs, which
    the Spark nodes write, and whoever calls this holds the control key: its children come from a fresh
    interpreter, not a fork of the caller): a photo that does not decode,
    or crashes or exhausts the decoder, is left out."""
    from spark_jobs.common.sandbox import map_isolated

    keys = list(jpegs)
    try:
        made = map_isolated(thumbnail, [jpegs[k] for k in keys], memory_bytes=memory_bytes, timeout_s=timeout_s,
                            fresh=True)
    except OSError:  # no child could be forked: a page without thumbnails
        return {}
    return {key: outcome.value for key, outcome in zip(keys, made) if outcome.ok}


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return "" if value is None else str(value)


def render(*, quality: dict, clusters: list[dict], figures: list[tuple[str, bytes]], context: dict,
           thumbnails: dict[str, bytes], classifier: dict | None = None, run_id: str | None = None) -> str:
    """The page. `clusters`: cluster, size, purity, top_fruits [[name, n]], thumbnails [key]; `figures`:
    (caption, PNG bytes); `thumbnails`: key -> JPEG bytes (keys without bytes are left out);
    `classifier`: the train step's metrics."""
    rows = [{**c, "thumbnails": [{"key": k, "data": encode(thumbnails[k])} for k in c.get("thumbnails", [])
                                 if k in thumbnails]} for c in clusters]
    figures_ = [{"caption": caption, "data": encode(data)} for caption, data in figures]
    classifier_ = None
    if classifier:
        recall = classifier.get("per_class_recall") or {}
        weakest = sorted(recall.items(), key=lambda kv: (kv[1], kv[0]))[:5]
        classifier_ = {
            "figures": [("accuracy", fmt(classifier.get("accuracy"))), ("macro F1", fmt(classifier.get("macro_f1"))),
                        ("lowest recall", ", ".join(f"{k} {v:.2f}" for k, v in weakest))],
            "confused": classifier.get("confused_pairs") or [],
        }
    return _environment().from_string(TEMPLATE).render(
        run_id=run_id, quality=[(k, fmt(v)) for k, v in quality.items()], classifier=classifier_,
        clusters=rows, figures=figures_, context=[(k, fmt(v)) for k, v in context.items()],
        thumbnail_px=THUMBNAIL_PX)


NOTICE = ('<p id="notice" style="border:1px solid #d9b300;background:#fff8d6;padding:6px 10px">'
          '{{ text }}</p>')
NOTICE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fruitflow report</title></head>
<body style="font-family:sans-serif;margin:1.5em"><h1>fruitflow report</h1>""" + NOTICE + """</body></html>
"""


def with_notice(page: str | None, text: str) -> str:
    """`page` (a stored report) with `text` as its first line; without a page, a page of that line."""
    if page and "<body>" in page:
        return page.replace("<body>", "<body>" + _environment().from_string(NOTICE).render(text=text), 1)
    return _environment().from_string(NOTICE_PAGE).render(text=text)
