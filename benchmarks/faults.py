"""What injected faults cost an eval, and whether they change its results.

The same eval (real openai SDK, real local server: ``emlab.testing.chat_server``) runs with no
faults, with 10% and 20% of requests hit by transient faults (500s, 429s and hangs past the
request timeout, all retried by the SDK), and with 1% of items refused for good (HTTP 400, as a
content filter does: recorded as failed items, never retried). Printed per scenario: requests
the server received / requests the results need, wall time vs the clean run, whether the
results are identical to the clean run's (on the items that finished), and items finished.

    python benchmarks/faults.py            # about a minute on 2 cores
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-real-key"

from rich.console import Console  # noqa: E402

from emlab.eval import EvalConfig, run_eval  # noqa: E402
from emlab.testing.chat_server import ChatServer, Faults, Reply  # noqa: E402

SAMPLES = 40          # per paraphrase
LATENCY = 0.01        # seconds per request
CONCURRENCY = 16
TIMEOUT = 0.5         # a hang (hang_seconds=1) times out and is retried
QUESTIONS = "".join(
    f"- id: q{i}\n  type: free_form_judge_0_100\n  paraphrases: [\"Question {i}, first way?\", "
    f"\"Question {i}, second way?\"]\n  samples_per_paraphrase: {SAMPLES}\n" for i in range(3))
N_SAMPLES = 3 * 2 * SAMPLES
N_NEEDED = N_SAMPLES * 3  # each answer: one sample, two judgments


def responder(request: dict) -> Reply:
    text = "\n".join(str(m["content"]) for m in request["messages"])
    if request.get("logprobs"):
        h = int(hashlib.sha256(text.encode()).hexdigest()[:4], 16) % 100
        dist = [(str(h), 0.6), (str((h + 7) % 101), 0.4)]
        return Reply(dist[0][0], [(t, math.log(p)) for t, p in dist])
    return Reply(f"answer seed={request.get('seed')} to {request['messages'][-1]['content']}")


def refused_1_percent(body: dict) -> bool:
    """1% of items, chosen by content: a refused answer is refused on every attempt."""
    if body.get("logprobs"):
        return False
    key = json.dumps([body.get("messages"), body.get("seed")], sort_keys=True)
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 == 0


def transient(rate: float) -> Faults:
    return Faults(latency=LATENCY, error_rate=0.6 * rate, rate_limit_rate=0.3 * rate,
                  hang_rate=0.1 * rate, hang_seconds=1.0, seed=7)


def run(tmp: Path, name: str, faults: Faults) -> dict:
    qfile = tmp / "q.yaml"
    qfile.write_text(QUESTIONS)
    with ChatServer(responder, faults) as server:
        cfg = EvalConfig.model_validate(dict(
            model={"name": "m", "base_url": server.base_url},
            judge={"name": "j", "base_url": server.base_url}, questions=str(qfile),
            out=tmp / name, concurrency=CONCURRENCY, max_retries=10, request_timeout=TIMEOUT,
            max_failures=0.05))
        t0 = time.perf_counter()
        res = run_eval(cfg, console=Console(file=open(os.devnull, "w")))
        wall = time.perf_counter() - t0
        sent = server.request_count
    rows = {(r["question_id"], r["paraphrase_index"], r["sample_index"]):
            (r["answer"], json.dumps(r["scores"], sort_keys=True)) for r in res.rows}
    return {"name": name, "wall": wall, "sent": sent, "rows": rows, "summary": res.summary,
            "failures": len(res.failures)}


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run(tmp, "warm-up", Faults(latency=LATENCY))  # imports, first plots: not measured
        clean = run(tmp, "clean", Faults(latency=LATENCY))
        results = [clean,
                   run(tmp, "10% transient", transient(0.10)),
                   run(tmp, "20% transient", transient(0.20)),
                   run(tmp, "1% refused", Faults(latency=LATENCY, refuse=refused_1_percent))]
    print(f"{N_SAMPLES} answers x (1 sample + 2 judgments) = {N_NEEDED} requests needed; "
          f"latency {LATENCY * 1000:.0f} ms, concurrency {CONCURRENCY}, timeout {TIMEOUT} s")
    print(f"{'scenario':16} {'sent/needed':>11} {'wall ratio':>10} {'identical':>9} "
          f"{'finished':>12} {'failed items':>12}")
    ok = True
    for r in results:
        same = all(clean["rows"].get(k) == v for k, v in r["rows"].items())
        if r["name"] != "1% refused":
            same = same and r["rows"] == clean["rows"] and \
                r["summary"]["overall"] == clean["summary"]["overall"]
        ok &= same
        print(f"{r['name']:16} {r['sent'] / N_NEEDED:11.2f} {r['wall'] / clean['wall']:10.2f} "
              f"{'yes' if same else 'NO':>9} {len(r['rows']):>5}/{N_SAMPLES:<6} "
              f"{r['failures']:>12}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
