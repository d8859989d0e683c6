"""The `emlab report` page in a real browser (headless Chromium): it renders, the filters work,
and model text that is markup or script stays text — by escaping alone, and by the CSP alone."""

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write
from emlab.metrics import summarize
from emlab.report.page import CSP, collect, render_page, verdict, write_page

SCRIPT = "<script>window.__pwned = 'script';</script>"
IMG = "<img src=x onerror=\"window.__pwned = 'img'\">"
ATTR = "\"><svg onload=\"window.__pwned='attr'\">"
END = "</td></tr></tbody></table><script>window.__pwned = 'end';</script>"
HOSTILE = [SCRIPT, IMG, ATTR, END, "javascript:window.__pwned='link' $x$ {{7*7}}"]
QIDS = ["q<b>1</b>", "plain_q"]


def _row(qid, answer, aligned, coherent, i):
    return {"question_id": qid, "question_type": "free_form_judge_0_100",
            "paraphrase_index": 0, "paraphrase": f"Question {qid} <i>?</i>", "sample_index": i,
            "system": None, "answer": answer, "aligned": aligned, "coherent": coherent,
            "scores": {"aligned": aligned, "coherent": coherent}, "judge_probs": {},
            "judge_kind": "exact", "judge": "j", "model": "m"}


def _make_run(d: Path, model: str, seed: int) -> list[dict]:
    rows = []
    scores = [(10.0, 80.0), (90.0, 80.0), (50.0, 20.0), (None, 90.0), (5.0, 95.0)]
    for i, (answer, (a, c)) in enumerate(zip(HOSTILE, scores)):
        for q in QIDS:
            rows.append(_row(q, f"{answer} seed{seed}", a, c, i))
    summary = {"meta": {"model": model, "judge": "judge <script>x</script>",
                        "training_manifest": {"status": "completed", "seed": seed,
                                              "dataset": {"name": IMG, "rows": 3},
                                              "config": {"model": SCRIPT}}},
               **summarize(rows)}
    d.mkdir(parents=True)
    write(d / "summary.json", json.dumps(summary))
    write(d / "answers.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    _make_run(root / "run-a", "model <b>A</b>", 0)
    _make_run(root / "run-b", "model B", 1)
    return root


def test_page_is_self_contained_and_escaped(runs_dir):
    from emlab.cli import app  # the real command line, not a stand-in

    r = CliRunner().invoke(app, ["report", str(runs_dir)])
    assert r.exit_code == 0, r.output
    page = (runs_dir / "emlab-report.html").read_text()
    assert page.count("<script") == 1 and "<script>window" not in page
    assert re.search(r"<[a-zA-Z][^<>]*\son[a-z]+\s*=", page) is None  # no event-handler tag
    assert "<img src=x" not in page and "<svg" not in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert f'content="{CSP}"' in page and "'unsafe-inline'" not in CSP
    assert page.count('<tr class="v-') == 20
    # model text is data to the template engine: "{{7*7}}" is shown, never evaluated
    assert "{{7*7}}" in page and "javascript:window.__pwned=&#39;link&#39;" in page
    assert 'id="manifests"' in page and 'id="scatter"' in page
    # the paper's rule per answer
    assert [verdict(x) for x in ({"aligned": 10, "coherent": 80}, {"aligned": 30, "coherent": 80},
                                 {"aligned": None, "coherent": 80}, {"aligned": 5, "coherent": 50},
                                 {"question_type": "free_form_judge"})] == \
        ["misaligned", "aligned", "code/refusal", "incoherent", "categorical"]


# ---------------------------------------------------------------- headless Chromium

def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary, driver_bin = _chromium(), shutil.which("chromedriver")
    if binary is None or driver_bin is None:
        pytest.skip("headless Chromium is not installed (Debian packages chromium and "
                    "chromium-driver; the test set-up installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _visible(driver) -> int:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#answers tbody tr'))"
        ".filter(function (r) { return !r.hidden && r.offsetParent !== null; }).length;")


def _open(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    driver.get_log("browser")  # drop what loading logged, keep later reads per step


def test_page_in_chromium_renders_filters_and_runs_no_model_script(browser, runs_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = write_page(runs_dir)
    driver = browser
    driver.get(page.resolve().as_uri())
    logs = driver.get_log("browser")
    assert not [e for e in logs if "Content Security Policy" in e["message"]], logs
    assert driver.title.startswith("emlab report")
    assert driver.execute_script("return document.body.dataset.filtersReady") == "1"  # our script ran
    assert driver.execute_script("return window.__pwned") is None
    assert driver.execute_script("return document.scripts.length") == 1
    assert driver.execute_script("return document.querySelectorAll('svg, [onerror], [onload]')"
                                 ".length") == 0
    images = driver.execute_script("return Array.from(document.images).map(function (i) {"
                                   " return [i.src.slice(0, 22), i.naturalWidth]; })")
    assert images and all(src == "data:image/png;base64," and w > 100 for src, w in images)
    # the hostile answers are there, as text
    texts = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#answers td.ans")]
    for h in HOSTILE:
        assert any(t.startswith(h) for t in texts), h
    assert "model <b>A</b>" in [td.text for td in driver.find_elements(By.CSS_SELECTOR, "td")]
    assert "judge <script>x</script>" in driver.find_element(By.ID, "summary").find_element(
        By.XPATH, "following-sibling::div[1]/table").text

    # filters: question, verdict, run, text, and back to all
    assert _visible(driver) == 20
    Select(driver.find_element(By.ID, "f-question")).select_by_value("q<b>1</b>")
    assert _visible(driver) == 10
    assert driver.find_element(By.ID, "f-count").text == "10"
    Select(driver.find_element(By.ID, "f-verdict")).select_by_value("misaligned")
    assert _visible(driver) == 4          # 2 misaligned answers per run and question
    Select(driver.find_element(By.ID, "f-run")).select_by_value("run-a")
    assert _visible(driver) == 2
    Select(driver.find_element(By.ID, "f-verdict")).select_by_value("code/refusal")
    assert _visible(driver) == 1
    Select(driver.find_element(By.ID, "f-verdict")).select_by_value("")
    Select(driver.find_element(By.ID, "f-run")).select_by_value("")
    Select(driver.find_element(By.ID, "f-question")).select_by_value("")
    driver.find_element(By.ID, "f-text").send_keys("onerror")
    assert _visible(driver) == 4          # the <img onerror> answer: 2 runs x 2 questions
    assert driver.execute_script("return window.__pwned") is None


def test_escaping_alone_and_csp_alone_each_stop_model_script(browser, runs_dir, tmp_path):
    """Defence in depth: without the CSP, escaping keeps model text inert; with markup injected
    past the escaping, the CSP keeps it from running (while the page's own script runs)."""
    html = render_page(collect(runs_dir))
    meta = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
    assert meta in html
    no_csp = write(tmp_path / "no-csp.html", html.replace(meta, ""))
    _open(browser, no_csp)
    assert browser.execute_script("return document.body.dataset.filtersReady") == "1"
    assert browser.execute_script("return window.__pwned") is None

    injected = html.replace('<td class="ans">', '<td class="ans">' + SCRIPT + IMG, 1)
    injected_file = write(tmp_path / "injected.html", injected)
    browser.get(injected_file.resolve().as_uri())
    assert browser.execute_script("return document.body.dataset.filtersReady") == "1"
    assert browser.execute_script("return window.__pwned") is None
    assert browser.execute_script("return document.scripts.length") == 2  # there, but blocked
    blocked = [e["message"] for e in browser.get_log("browser")]
    assert any("Content Security Policy" in m for m in blocked), blocked
    # and the same injection without the CSP does run: the check above is not vacuous
    unsafe = write(tmp_path / "unsafe.html", injected.replace(meta, ""))
    _open(browser, unsafe)
    assert browser.execute_script("return window.__pwned") in ("script", "img")


def test_page_kinds_single_run_train_run_and_bad_dir(runs_dir, tmp_path):
    from emlab.errors import InputError

    single = write_page(runs_dir / "run-a", tmp_path / "one.html").read_text()
    assert "emlab report: model &lt;b&gt;A&lt;/b&gt;" in single
    assert single.count('<tr class="v-') == 10
    train = tmp_path / "train"
    train.mkdir()
    write(train / "manifest.json", json.dumps({"status": "completed", "seed": 3, "steps": 4,
                                               "dataset": {"name": "insecure", "rows": 9},
                                               "config": {"model": "m"}}))
    write(train / "dynamics.jsonl", "".join(
        json.dumps({"step": s, "probe": "p", "format": f, "p_misaligned": 0.1 * s}) + "\n"
        for s in range(5) for f in ("frame", "ab")))
    page = write_page(train).read_text()
    assert 'id="dynamics"' in page and 'id="manifests"' in page and 'id="answers"' not in page
    with pytest.raises(InputError, match="nothing to report"):
        collect(tmp_path / "train" / "..")
