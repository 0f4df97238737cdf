"""Loading routing data and the evaluation metrics (APGR, CPT) of the learned router.

A data set is one CSV file or a directory of CSV files (all read, sorted by name).
Each file has a `prompt` column and either
  * two correctness columns, weak model first then strong model (values True/False,
    1/0, yes/no): e.g. the RouteLLM MMLU files
    `prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview`; or
  * a `label` column: 1 when the weak model's answer is worse than the strong
    model's, 0 otherwise (a preference label).
Any other column (e.g. a `subject`) is ignored; the subject used by the
leave-subjects-out evaluation is the file name (minus `mmlu_` and `.csv`).
"""

import csv
import glob
import os
import sys

import features

TRUE = {"true", "1", "yes", "y", "t"}
FALSE = {"false", "0", "no", "n", "f", ""}
HELD_OUT_SALT = b"switchboard-heldout-v1:"


def _bool(value, where):
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    sys.exit(f"{where}: not a boolean: {value!r}")


class Rows:
    """Parallel lists: prompt, subject, weak correct, strong correct, label (weak worse)."""

    def __init__(self):
        self.prompts, self.subjects, self.weak, self.strong, self.label = [], [], [], [], []
        self.has_correctness = True


def load(path):
    files = sorted(glob.glob(os.path.join(path, "*.csv"))) if os.path.isdir(path) else [path]
    if not files:
        sys.exit(f"{path}: no CSV files")
    rows = Rows()
    csv.field_size_limit(1 << 26)
    for fn in files:
        subject = os.path.basename(fn)[: -len(".csv")]
        subject = subject[len("mmlu_") :] if subject.startswith("mmlu_") else subject
        with open(fn, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or "prompt" not in header:
                sys.exit(f"{fn}: needs a `prompt` column (header: {header})")
            p = header.index("prompt")
            if "label" in header:
                lab, weak_i, strong_i = header.index("label"), None, None
                rows.has_correctness = False
            else:
                others = [i for i, h in enumerate(header) if i != p and h not in ("subject", "id")]
                if len(others) != 2:
                    sys.exit(f"{fn}: needs two correctness columns (weak, strong) or a `label` column")
                lab, (weak_i, strong_i) = None, others
            for n, r in enumerate(reader, start=2):
                where = f"{fn}:{n}"
                if len(r) != len(header):
                    sys.exit(f"{where}: {len(r)} fields, header has {len(header)}")
                rows.prompts.append(r[p])
                rows.subjects.append(subject)
                if lab is not None:
                    # Preference only: quality is "strong's win captured", so PGR is the
                    # share of the weak-worse prompts sent to strong.
                    y = _bool(r[lab], where)
                    rows.weak.append(False)
                    rows.strong.append(y)
                else:
                    w, s = _bool(r[weak_i], where), _bool(r[strong_i], where)
                    rows.weak.append(w)
                    rows.strong.append(s)
                    y = s and not w
                rows.label.append(1 if y else 0)
    return rows


def is_held_out(prompt):
    """The fixed random 20% held-out split: by a salted hash of the prompt, so the
    same prompt text always falls on the same side (no duplicate leaks across the
    split) and any tool can recompute it without a list."""
    return features.fnv(HELD_OUT_SALT + prompt.encode("utf-8")) % 5 == 0


SHARES = [i / 10 for i in range(1, 11)]  # strong-call shares for APGR (10%..100%)
FINE_SHARES = [i / 100 for i in range(1, 101)]


def pgr_curve(scores, weak, strong, shares, tie_seed=0):
    """PGR at each strong-call share: the top share of prompts by score go to strong.

    Ties in score are broken by a fixed random order (matters for length baselines)."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    weak = np.asarray(weak, dtype=np.float64)
    strong = np.asarray(strong, dtype=np.float64)
    n = len(scores)
    perm = np.random.RandomState(tie_seed).permutation(n)
    order = perm[np.argsort(-scores[perm], kind="stable")]
    gain = (strong - weak)[order]
    cum = np.concatenate([[0.0], np.cumsum(gain)])
    base, top = weak.mean(), strong.mean()
    out = []
    for s in shares:
        k = int(round(s * n))
        q = base + cum[k] / n
        out.append((q - base) / (top - base))
    return out


def metrics(scores, weak, strong, tie_seed=0):
    pgr = pgr_curve(scores, weak, strong, SHARES, tie_seed)
    fine = pgr_curve(scores, weak, strong, FINE_SHARES, tie_seed)

    def cpt(x):
        for s, p in zip(FINE_SHARES, fine):
            if p >= x:
                return s
        return 1.0

    return {
        "apgr": sum(pgr) / len(pgr),
        "apgr_fine": sum(fine) / len(fine),
        "cpt50": cpt(0.5),
        "cpt80": cpt(0.8),
    }


def random_metrics(weak, strong, draws=200):
    import numpy as np

    rng = np.random.RandomState(7)
    acc = {"apgr": 0.0, "apgr_fine": 0.0, "cpt50": 0.0, "cpt80": 0.0}
    for _ in range(draws):
        m = metrics(rng.rand(len(weak)), weak, strong)
        for k in acc:
            acc[k] += m[k] / draws
    return acc
