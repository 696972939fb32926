"""The "Recognise a fruit" page of the plugin: an upload form, and for a photo the top-3 fruits, the
nearest cluster and thumbnails of the nearest training photos (Jinja2, autoescaped: fruit names and
keys come from object keys, the file name from the uploader)."""

from __future__ import annotations

import logging

import jinja2

from spark_jobs.common import report_page

log = logging.getLogger(__name__)

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Recognise a fruit</title>
<style>body{font-family:sans-serif;margin:1.5em;max-width:900px}table{border-collapse:collapse;margin:0.8em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}.thumbs img{width:96px;height:96px;margin-right:4px}
.error{color:#a00}.unknown{color:#a60}</style></head><body>
<h1>Recognise a fruit</h1>
<form method="post" enctype="multipart/form-data">
<input type="file" name="photo" accept="image/jpeg,image/png" required> <button type="submit">Recognise</button>
</form>
{% if result %}{% if result.error %}<p class="error" id="error">{{ result.path or "" }} {{ result.error }}</p>{% else %}
<h2 id="fruit">{{ result.fruit }}</h2>
{% if result.unknown %}<p class="unknown" id="unknown">Far from every photo the model was trained on (distance
{{ "%.3f"|format(result.distance) }}): maybe a fruit it has not seen, or not a fruit. Best guess above.</p>{% endif %}
<table id="top"><tr><th>fruit</th><th>probability</th></tr>
{% for t in result.top %}<tr><td>{{ t.fruit }}</td><td>{{ "%.3f"|format(t.probability) }}</td></tr>{% endfor %}</table>
<p>Nearest KMeans cluster: <span id="cluster">{{ result.cluster }}</span></p>
<p>Nearest training photos:</p>
<div class="thumbs" id="neighbours">{% for n in result.neighbours %}{% if n.key in thumbnails %}<img
 src="data:image/jpeg;base64,{{ thumbnails[n.key] }}" alt="{{ n.fruit }}" title="{{ n.key }} ({{ n.fruit }})">{% else %}
<span>{{ n.fruit }}</span>{% endif %}{% endfor %}</div>
{% endif %}{% endif %}
{% if source %}<p style="color:#777">Model: run {{ source.run_id }}, {{ source.backbone }} ({{ source.weights }}),
held-out accuracy {{ source.accuracy_held_out }}</p>{% endif %}
</body></html>
"""


def render(*, result: dict | None, thumbnails: dict[str, str], source: dict | None) -> str:
    environment = jinja2.Environment(autoescape=True)
    return environment.from_string(TEMPLATE).render(result=result, thumbnails=thumbnails, source=source)


def neighbour_thumbnails(classifier, result: dict, cfg, s3_hook) -> dict[str, str]:
    """key -> base64 JPEG thumbnail of each neighbour whose preprocessed JPEG could be read (its locator
    from the classifier's bank, `jpeg_packs`; a bank exported before packs has none)."""
    from spark_jobs.common import jpeg_packs

    get_range = jpeg_packs.s3_range(s3_hook.get_conn())
    found: dict[str, bytes] = {}
    for neighbour in result.get("neighbours", []):
        try:
            if locator := classifier.jpeg_of(neighbour["key"]):
                found[neighbour["key"]] = jpeg_packs.read(locator, cfg.preprocessed_bucket, get_range)
        except Exception as exc:  # noqa: BLE001 - gone, refused or unreadable: shown without its photo
            log.warning("thumbnail of %s left out: %s", neighbour["key"], exc)
    # the preprocessed JPEGs are the Spark nodes' writing: decoded in the sandbox, not the api-server
    made = report_page.thumbnails(found, **cfg.decoder_limits)
    return {key: report_page.encode(data) for key, data in made.items()}
