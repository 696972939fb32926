"""fruitflow inside the Airflow UI (Airflow >= 3.1 plugin): a FastAPI app on the api-server under
/fruitflow, and two entries in the UI that open its pages.

- "Fruit report" on each run of `fruit_pipeline` (an external view on the DAG run page): the run's
  self-contained report page, which `publish` stored beside the run summary.
- "Recognise a fruit" in the navigation: upload a photo, see the top-3 fruits, the nearest cluster and
  the nearest training photos, from the latest trained run (`fruitflow classify`'s code, no Spark).

Airflow does not protect a plugin's endpoints by itself: every route here depends on Airflow's own
authentication (the UI's session cookie or a bearer token, the same JWT) and on read access to the
DAG's runs; an anonymous request gets 401 or 403. Pages send a Content-Security-Policy that allows no
script and inline images only. Nothing heavy is imported until a page is asked for.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, File, HTTPException, UploadFile
from fastapi.responses import HTMLResponse

from fruitflow_airflow.run_report import DAG_ID, PLUGIN_PREFIX

AWS_CONN_ID = "aws_default"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

app = FastAPI(title="fruitflow", description="fruit_pipeline's reports and fruit recognition",
              dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))])


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _s3_hook():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=AWS_CONN_ID)


def _config():
    from spark_jobs.common.config import Config

    return Config.from_env()


@app.get("/runs/{run_id}/report", response_class=HTMLResponse)
def run_report(run_id: str) -> HTMLResponse:
    from fruitflow_airflow import run_report as pages

    try:
        page = pages.read(_s3_hook(), _config(), run_id)
    except ValueError as exc:  # a run id that names no folder of its own
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    if page is None:
        raise HTTPException(status_code=404, detail=f"no report for run {run_id!r}: the run has not finished, "
                                                    "found nothing new, or failed before publishing")
    return _page(page)


_CLASSIFIERS: dict[str, object] = {}  # summary URI -> loaded Classifier (the newest run's, normally one)


def _classifier():
    import json

    from fruitflow.classify import Classifier, Store, latest_pointer

    cfg = _config()
    store = Store(cfg, _s3_hook().get_conn())
    pointer = latest_pointer(store)
    if pointer is None:
        return None
    summary = json.loads(store.get(pointer))["summary"]
    if summary not in _CLASSIFIERS:
        _CLASSIFIERS.clear()
        _CLASSIFIERS[summary] = Classifier.load(summary, cfg, client=store.client)
    return _CLASSIFIERS[summary]


@app.get("/recognise", response_class=HTMLResponse)
def recognise_form() -> HTMLResponse:
    from fruitflow_airflow.recognise_page import render

    return _page(render(result=None, thumbnails={}, source=None))


@app.post("/recognise", response_class=HTMLResponse)
async def recognise(photo: UploadFile = File(...)) -> HTMLResponse:
    from fruitflow.classify import NoModel
    from fruitflow_airflow.recognise_page import neighbour_thumbnails, render

    cfg = _config()
    data = await photo.read(cfg.max_image_bytes + 1)
    if len(data) > cfg.max_image_bytes:
        return _page(render(result={"error": f"file larger than {cfg.max_image_bytes} bytes"}, thumbnails={},
                            source=None), 413)
    try:
        classifier = _classifier()
    except NoModel as exc:
        return _page(render(result={"error": str(exc)}, thumbnails={}, source=None), 503)
    if classifier is None:
        return _page(render(result={"error": "no trained run yet: run fruit_pipeline first"}, thumbnails={},
                            source=None), 503)
    with tempfile.TemporaryDirectory(prefix="fruitflow-upload-") as tmp:
        path = Path(tmp) / "photo"
        path.write_bytes(data)
        result = classifier.predict([path])[0]
    result["path"] = photo.filename or "photo"
    thumbnails = neighbour_thumbnails(classifier, result, cfg, _s3_hook()) if "error" not in result else {}
    return _page(render(result=result, thumbnails=thumbnails, source=classifier.source))


class FruitflowUiPlugin(AirflowPlugin):
    name = "fruitflow"
    fastapi_apps = [{"app": app, "url_prefix": PLUGIN_PREFIX, "name": "fruitflow"}]
    external_views = [
        {"name": "Fruit report", "href": f"{PLUGIN_PREFIX.lstrip('/')}/runs/{{RUN_ID}}/report",
         "destination": "dag_run", "url_route": "fruitflow_report"},
        {"name": "Recognise a fruit", "href": f"{PLUGIN_PREFIX.lstrip('/')}/recognise", "destination": "nav",
         "url_route": "fruitflow_recognise"},
    ]
