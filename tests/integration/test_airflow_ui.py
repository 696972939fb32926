"""`airflow standalone` (what `make airflow-ui` runs), used as a person would: in a real browser, log in,
trigger fruit_pipeline from its trigger form with a non-default Param (the model left to the DAG's own
choice, offline), open the run's "Fruit report" tab and the "Recognise a fruit" page. Through the REST
API: a bad Param is refused, the `publish` XCom holds the summary, the plugin refuses strangers. One run
of the DAG serves every check; the whole process group is stopped at the end."""

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from fruitflow import airflow_ui
from fruitflow import stack as local_stack
from fruitflow.package import build_zip
from fruitflow.stack.process import port_open
from spark_jobs.common.config import Config
from spark_jobs.common.models import resnet50_imagenet_available
from tests import browser
from tests.helpers import SAMPLE_500, real_images

pytestmark = pytest.mark.slow
BASE = airflow_ui.url()


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


def _plugin_refuses_strangers(token, run_id, summary, root):
    """The plugin's pages, for Airflow's users only; a bad upload gets an error on the page."""
    path = f"/fruitflow/runs/{urllib.parse.quote(run_id, safe='')}/report"
    assert summary["report_url"].endswith(path)
    assert _page("GET", path)[0] in (401, 403)  # Airflow does not guard plugin endpoints: the plugin does
    assert _page("GET", path, token="not-a-token")[0] in (401, 403)
    status, headers, page = _page("GET", path, token)
    assert status == 200 and "img-src data:" in headers["Content-Security-Policy"]
    assert 'id="quality"' in page and 'id="classifier"' in page and page.count('class="cluster"') == N_CLUSTERS
    assert page.count("data:image/jpeg;base64,") >= 2 and page.count("data:image/png;base64,") == 6
    assert _page("GET", "/fruitflow/runs/no-such-run/report", token)[0] == 404
    plugins = airflow_ui.api("GET", "/api/v2/plugins", token)["plugins"]
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


def _a_run_with_nothing_new_shows_the_latest_report(token, raw_prefix, trained_run_id):
    """A second Trigger on the same photos (what a person meets after the scheduled run took the upload)
    finds nothing new; its Fruit report tab shows the latest trained run's page under a line saying so."""
    run_id = airflow_ui.api("POST", "/api/v2/dags/fruit_pipeline/dagRuns", token,
                            {"logical_date": None, "conf": {"raw_prefix": raw_prefix}})["dag_run_id"]
    run_path = f"/api/v2/dags/fruit_pipeline/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    assert _wait("the second run finished", lambda: (s := airflow_ui.api("GET", run_path, token)["state"])
                 in ("success", "failed") and s, 600, every=5) == "success"
    status, _, page = _page("GET", f"/fruitflow/runs/{urllib.parse.quote(run_id, safe='')}/report", token)
    assert status == 200 and f"Run {run_id} found nothing new" in page, page[:2000]
    assert f"the report of run {trained_run_id}" in page and page.count('class="cluster"') == N_CLUSTERS


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


N_CLUSTERS = 3  # the non-default Param set in the trigger form (default: one cluster per fruit, 2 here)


def _log_in(driver, password):
    driver.get(BASE + "/")
    WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.NAME, "username"))).send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda d: "/auth/login" not in d.current_url)


def _set_field(driver, name, value):
    field = driver.find_element(By.NAME, name)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(value)


def _trigger_from_the_form(driver, screens, raw_prefix) -> str:
    """The DAG's Trigger button, its Params form (the trigger form Airflow draws from the Params' JSON
    schema), then the run page it opens: returns that run's id."""
    driver.get(BASE + "/dags/fruit_pipeline")
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))
                                    ).click()
    WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.NAME, "element_raw_prefix")))
    assert driver.find_element(By.NAME, "element_backbone").get_attribute("value") == "auto"
    _set_field(driver, "element_raw_prefix", raw_prefix)
    _set_field(driver, "element_n_clusters", str(N_CLUSTERS))
    screens.shot("trigger-form")
    driver.find_element(By.XPATH, "(//button[normalize-space()='Trigger'])[last()]").click()
    WebDriverWait(driver, 60).until(lambda d: "/dags/fruit_pipeline/runs/" in d.current_url)
    screens.shot("run-triggered")
    return urllib.parse.unquote(driver.current_url.split("/runs/", 1)[1].split("/", 1)[0])


def _report_tab(driver, screens, run_id):
    """The run page's "Fruit report" tab: the plugin's page in Airflow's frame, as a person sees it."""
    driver.get(f"{BASE}/dags/fruit_pipeline/runs/{urllib.parse.quote(run_id, safe='')}")
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.XPATH, "//*[normalize-space()='Fruit report']"))
                                    ).click()
    frame = WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.TAG_NAME, "iframe")))
    driver.switch_to.frame(frame)
    try:
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "quality")))
        quality = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
                   for row in driver.find_elements(By.CSS_SELECTOR, "#quality tr")}
        assert {"ari", "nmi", "silhouette"} <= set(quality), quality
        clusters = driver.find_elements(By.CSS_SELECTOR, "tr.cluster")
        assert len(clusters) == N_CLUSTERS
        for row in clusters:  # one strip of member thumbnails per cluster, each decoded by the browser
            thumbs = browser.images_loaded(driver, "td.thumbs img", row)
            assert thumbs and all(t["complete"] and t["width"] > 0 for t in thumbs), thumbs
        figures = browser.images_loaded(driver, "figure img")
        assert len(figures) == 6 and all(f["width"] > 0 for f in figures), figures
        driver.execute_script("window.scrollTo(0, 0)")
    finally:
        driver.switch_to.default_content()
    screens.shot("report-tab")


def _recognise_page(driver, screens, photo):
    """"Recognise a fruit" from the navigation: upload a photo, see the top 3 and the nearest photos."""
    driver.get(BASE + "/")
    nav_entry = "//*[starts-with(@aria-label, 'Recogni') or normalize-space()='Recognise a fruit']"
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.XPATH, nav_entry))).click()
    frame = WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.TAG_NAME, "iframe")))
    driver.switch_to.frame(frame)
    try:
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.NAME, "photo"))).send_keys(str(photo))
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(driver, 120).until(ec.presence_of_element_located((By.ID, "top")))
        fruits = {p.name for p in photo.parent.parent.iterdir()}  # the two fruits the run trained on
        top = [row.find_element(By.TAG_NAME, "td").text for row in driver.find_elements(By.CSS_SELECTOR, "#top tr")[1:]]
        assert driver.find_element(By.ID, "fruit").text == top[0] and set(top) == fruits, top
        neighbours = browser.images_loaded(driver, "#neighbours img")
        assert neighbours and all(n["width"] > 0 for n in neighbours), neighbours
    finally:
        driver.switch_to.default_content()
    screens.shot("recognise")


def test_a_first_run_from_the_airflow_ui(stack, s3, image_tree):
    browser.require()
    build_zip()
    root = image_tree(real_images(SAMPLE_500, 2, 3))
    raw_prefix = f"ui-{uuid.uuid4().hex[:6]}"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "fruitflow-raw", f"{raw_prefix}/{path.relative_to(root).as_posix()}")
    env = airflow_ui.airflow_env()
    runs_prefix = Config.from_env(env).table_prefix(raw_prefix)
    env.update({"FRUITFLOW_RUNS_PREFIX": runs_prefix, "FRUITFLOW_SCHEDULE": "none"})
    proc = airflow_ui.start(env)
    driver = None
    try:
        airflow_ui.wait_healthy(timeout=300)
        password = _wait("generated password", lambda: json.loads(airflow_ui.password_file().read_text())["admin"], 60)
        token = airflow_ui.admin_token()
        airflow_ui.unpause(token)  # as `make airflow-ui` does
        with pytest.raises(urllib.error.HTTPError):  # a bad Param is refused before anything runs
            airflow_ui.api("POST", "/api/v2/dags/fruit_pipeline/dagRuns", token,
                  {"logical_date": None, "conf": {"pca_k": 0}})

        driver = browser.chrome()
        screens = browser.Screens(driver, "airflow_ui")
        _log_in(driver, password)
        run_id = _trigger_from_the_form(driver, screens, raw_prefix)
        driver.get("about:blank")  # the run page re-renders as it polls: a third of a core for the whole run
        run_path = f"/api/v2/dags/fruit_pipeline/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        final = _wait("run finished", lambda: (s := airflow_ui.api("GET", run_path, token)["state"])
                      in ("success", "failed") and s, 1500, every=5)
        assert final == "success"
        entry = airflow_ui.api("GET", f"{run_path}/taskInstances/publish/xcomEntries/return_value", token)
        summary = entry["value"] if isinstance(entry["value"], dict) else json.loads(entry["value"])
        assert summary["n_images"] == 6 and summary["n_input"] == 6 and summary["k"] == 6  # k=20 capped by n
        assert summary["n_clusters"] == N_CLUSTERS and 0 < summary["explained_variance"] <= 1
        # Only the photos' prefix and the clusters were set: the model is the DAG's own choice, offline too.
        expected = "resnet50" if resnet50_imagenet_available() else "efficientnet_lite0"
        assert summary["backbone"] == expected and summary["weights"] == "imagenet"
        assert summary["model_choice"].startswith("auto: ")

        events = airflow_ui.api("GET", "/api/v2/assets/events?source_dag_id=fruit_pipeline&source_run_id="
                       + urllib.parse.quote(run_id, safe=""), token)["asset_events"]
        extras = {e["uri"]: e["extra"] for e in events}  # what the Assets view shows beside each event
        report = extras[f"s3://fruitflow-reports/{runs_prefix}/report"]
        assert report["report_url"] == summary["report_url"] and report["n_images"] == 6
        assert report["ari"] == summary["ari"] and report["explained_variance"] == summary["explained_variance"]
        assert extras[f"s3://fruitflow-features/{runs_prefix}/feature-table"]["n_images"] == 6

        _report_tab(driver, screens, run_id)
        _recognise_page(driver, screens, sorted(root.rglob("*.jpg"))[0])
        _plugin_refuses_strangers(token, run_id, summary, root)
        _a_run_with_nothing_new_shows_the_latest_report(token, raw_prefix, run_id)
        screens.discard()
    finally:
        if driver is not None:
            driver.quit()
        airflow_ui.stop(proc)
    settings = local_stack.settings()
    assert _wait("api-server stopped", lambda: not port_open(settings.host, settings.airflow_port), 30, every=1)
