"""Quality of the learned router: APGR and CPT on (a) the fixed random 20% held-out
split and (b) leave-subjects-out (5 folds of subjects), with random and
prompt-length baselines, and the threshold <-> strong share <-> quality table.

    python router/evaluate.py --data ../shared/data/routellm-mmlu [--out bench/results/learned-router.md]

Every model here is trained by router/train.py's `train` on training prompts only
and scored through the exported f32 parameters (the scorer that ships); no
evaluation prompt is ever a training prompt. APGR is the mean PGR over strong-call
shares 10%, 20%, ..., 100% (the data README's definition; random routing scores
0.55 on it); "APGR (1%)" averages over 1%..100% (random about 0.50). CPT(x) is the
smallest strong share (1% steps) whose PGR reaches x.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import data as D  # noqa: E402
import train as T  # noqa: E402

SUBJECT_FOLDS = 5


def row(name, m):
    return f"| {name} | {m['apgr']:.3f} | {m['apgr_fine']:.3f} | {m['cpt50'] * 100:.0f}% | {m['cpt80'] * 100:.0f}% |"


def mean_metrics(ms):
    return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", help="also write the report (markdown) here")
    ap.add_argument("--no-stems", action="store_true", help="train without the prompts' stems (see train.py)")
    a = ap.parse_args()
    rows = D.load(a.data)
    ex = T.featurize(rows.prompts, augment=not a.no_stems)
    labels = rows.label
    weak = np.array(rows.weak, dtype=float)
    strong = np.array(rows.strong, dtype=float)
    n_bytes = np.array([len(p.encode("utf-8")) for p in rows.prompts], dtype=float)
    lines = []
    out = lines.append

    # (a) random held-out split
    held = np.array([D.is_held_out(p) for p in rows.prompts])
    tr, te = np.flatnonzero(~held), np.flatnonzero(held)
    params = T.train(ex, labels, tr)
    s_te = T.scores(params, ex, te)
    a_router = D.metrics(s_te, weak[te], strong[te])
    a_random = D.random_metrics(weak[te], strong[te])
    a_length = D.metrics(n_bytes[te], weak[te], strong[te])

    # (b) leave subjects out: subjects shuffled with the fixed seed into 5 folds
    subjects = sorted(set(rows.subjects))
    perm = np.random.RandomState(T.SEED).permutation(len(subjects))
    fold_of = {subjects[j]: k % SUBJECT_FOLDS for k, j in enumerate(perm)}
    fold = np.array([fold_of[s] for s in rows.subjects])
    b_router, b_random, b_length = [], [], []
    for k in range(SUBJECT_FOLDS):
        trk, tek = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        pk = T.train(ex, labels, trk, calibrate=False)
        b_router.append(D.metrics(T.scores(pk, ex, tek), weak[tek], strong[tek]))
        b_random.append(D.random_metrics(weak[tek], strong[tek], draws=50))
        b_length.append(D.metrics(n_bytes[tek], weak[tek], strong[tek]))

    out(f"Data: {len(rows.prompts)} prompts, {len(subjects)} subjects; weak accuracy {weak.mean():.3f}, "
        f"strong accuracy {strong.mean():.3f}; label (strong right, weak wrong) in {np.mean(labels):.1%}.")
    out("")
    out(f"(a) random 20% held-out split: train {len(tr)}, test {len(te)} prompts.")
    out(f"(b) leave-subjects-out: {SUBJECT_FOLDS} folds of subjects, each tested by a model trained on the other "
        "folds' subjects; mean over folds.")
    out("")
    out("| router | APGR | APGR (1%) | CPT(50%) | CPT(80%) |")
    out("|---|---|---|---|---|")
    out(row("(a) learned", a_router))
    out(row("(a) prompt length", a_length))
    out(row("(a) random", a_random))
    out(row("(b) learned", mean_metrics(b_router)))
    out(row("(b) prompt length", mean_metrics(b_length)))
    out(row("(b) random", mean_metrics(b_random)))
    out("")
    out("(b) per fold, learned: " + ", ".join(f"{m['apgr']:.3f}" for m in b_router))
    out("")

    # threshold <-> share <-> quality on held-out (a), thresholds from the model's calibration
    from model_file import Model  # noqa: E402

    m = Model.__new__(Model)
    m.quantiles = params["quantiles"]
    q = np.array(params["quantiles"])
    out("Threshold <-> strong share <-> quality, held-out split (a). The threshold is the one the model's "
        "calibration quantiles give for the promised share (`strong_share`); the measured share and accuracy "
        "are on the held-out prompts.")
    out("")
    out("| promised strong share | threshold | held-out strong share | accuracy | PGR |")
    out("|---|---|---|---|---|")
    base, top = weak[te].mean(), strong[te].mean()
    worst = 0.0
    for pct in (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100):
        share = pct / 100
        pos = share * (len(q) - 1)
        i = min(int(np.floor(pos)), len(q) - 1)
        t = q[i] + (q[min(i + 1, len(q) - 1)] - q[i]) * (pos - i)
        to_strong = s_te >= t
        acc = np.where(to_strong, strong[te], weak[te]).mean()
        got = to_strong.mean()
        if 0 < pct < 100:
            worst = max(worst, abs(got - share))
        out(f"| {pct}% | {t:.4f} | {got:.1%} | {acc:.3f} | {(acc - base) / (top - base):.2f} |")
    out("")
    out(f"Weak alone: accuracy {base:.3f}; strong alone: {top:.3f}. Largest gap between promised and held-out "
        f"share (10%..90%): {worst * 100:.1f} points.")
    report = "\n".join(lines)
    print(report)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            fh.write(report + "\n")


if __name__ == "__main__":
    main()
