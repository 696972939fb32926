"""`airflow standalone` (what `make airflow-ui` runs): trigger fruit_pipeline through the REST API with
Params, wait for success, read the `publish` XCom through the API, then stop the whole process group."""

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from fruitflow import airflow_ui
from fruitflow import stack as local_stack
from fruitflow.package import build_zip
from fruitflow.stack.process import port_open
from spark_jobs.common.models import resnet50_imagenet_available
from tests.helpers import SAMPLE_500, real_images

pytestmark = pytest.mark.slow
BASE = airflow_ui.url()


def _call(method, path, token=None, body=None, timeout=30):
    request = urllib.request.Request(BASE + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def _page(method, path, token=None, body=None, content_type=None):
    """(status, headers, text) of a plugin page, errors included."""
    request = urllib.request.Request(BASE + path, method=method, data=body)
    if content_type:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def _multipart(name, filename, data):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _report_and_recognise_pages(token, run_id, summary, root):
    """The plugin: the run's report page and the recognition page, for Airflow's users only."""
    path = f"/fruitflow/runs/{urllib.parse.quote(run_id, safe='')}/report"
    assert summary["report_url"].endswith(path)
    assert _page("GET", path)[0] in (401, 403)  # Airflow does not guard plugin endpoints: the plugin does
    assert _page("GET", path, token="not-a-token")[0] in (401, 403)
    status, headers, page = _page("GET", path, token)
    assert status == 200 and "img-src data:" in headers["Content-Security-Policy"]
    assert 'id="quality"' in page and 'id="classifier"' in page and page.count('class="cluster"') == 2
    assert page.count("data:image/jpeg;base64,") >= 2 and page.count("data:image/png;base64,") == 6
    assert _page("GET", "/fruitflow/runs/no-such-run/report", token)[0] == 404
    plugins = _call("GET", "/api/v2/plugins", token)["plugins"]
    views = {v["name"]: v for p in plugins if p["name"] == "fruitflow" for v in p["external_views"]}
    assert views["Fruit report"]["destination"] == "dag_run" and "{RUN_ID}" in views["Fruit report"]["href"]

    photo = sorted(root.rglob("*.jpg"))[0]
    body, content_type = _multipart("photo", photo.name, photo.read_bytes())
    assert _page("POST", "/fruitflow/recognise", None, body, content_type)[0] in (401, 403)
    status, _, page = _page("POST", "/fruitflow/recognise", token, body, content_type)
    assert status == 200 and 'id="fruit"' in page and 'id="top"' in page, page[-2000:]
    assert page.count("data:image/jpeg;base64,") >= 1  # thumbnails of the nearest training photos
    body, content_type = _multipart("photo", "<b>notes</b>.jpg", b"not a photo")
    status, _, page = _page("POST", "/fruitflow/recognise", token, body, content_type)
    assert status == 200 and 'id="error"' in page and "<b>notes</b>" not in page


def _wait(what, check, timeout, every=3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def test_trigger_through_the_rest_api(stack, s3, image_tree, monkeypatch):
    build_zip()
    root = image_tree(real_images(SAMPLE_500, 2, 3))
    raw_prefix = f"ui-{uuid.uuid4().hex[:6]}"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.relative_to(root).as_posix()}")
    env = airflow_ui.airflow_env()
    env.update({"FRUITFLOW_RUNS_PREFIX": f"{raw_prefix}-runs", "FRUITFLOW_SCHEDULE": "none"})
    proc = airflow_ui.start(env)
    try:
        airflow_ui.wait_healthy(timeout=300)
        password = _wait("generated password", lambda: json.loads(airflow_ui.password_file().read_text())["admin"], 60)
        token = _call("POST", "/auth/token", body={"username": "admin", "password": password})["access_token"]
        _wait("DAG parsed", lambda: _call("GET", "/api/v2/dags/fruit_pipeline", token), 240)
        _call("PATCH", "/api/v2/dags/fruit_pipeline", token, {"is_paused": False})
        with pytest.raises(urllib.error.HTTPError):  # a bad Param is refused before anything runs
            _call("POST", "/api/v2/dags/fruit_pipeline/dagRuns", token,
                  {"logical_date": None, "conf": {"pca_k": 0}})
        # Default Params (only where the photos are): the model is the DAG's own choice, offline too.
        run = _call("POST", "/api/v2/dags/fruit_pipeline/dagRuns", token, {
            "logical_date": None, "conf": {"raw_prefix": raw_prefix},
        })
        run_path = f"/api/v2/dags/fruit_pipeline/dagRuns/{run['dag_run_id']}"
        final = _wait("run finished", lambda: (s := _call("GET", run_path, token)["state"]) in ("success", "failed")
                      and s, 900, every=5)
        assert final == "success"
        entry = _call("GET", f"{run_path}/taskInstances/publish/xcomEntries/return_value", token)
        summary = entry["value"] if isinstance(entry["value"], dict) else json.loads(entry["value"])
        assert summary["n_images"] == 6 and summary["n_input"] == 6 and summary["k"] == 6  # k=20 capped by n
        assert 0 < summary["explained_variance"] <= 1
        expected = "resnet50" if resnet50_imagenet_available() else "efficientnet_lite0"
        assert summary["backbone"] == expected and summary["weights"] == "imagenet"
        assert summary["model_choice"].startswith("auto: ")
        _report_and_recognise_pages(token, run["dag_run_id"], summary, root)
    finally:
        airflow_ui.stop(proc)
    assert _wait("api-server stopped", lambda: not port_open(local_stack.settings().host, local_stack.settings().airflow_port), 30, every=1)
