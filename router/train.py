"""Train the learned router and write a model file.

    python router/train.py --data ../shared/data/routellm-mmlu --out router/models/default.sblr

The target is 1 when the weak model's answer is worse than the strong model's
(strong correct, weak wrong) and 0 otherwise, so the score estimates exactly the
probability the router contract names. Prompts where both models are equally
right or wrong carry no preference; they stay in as negatives (weak is not worse
there) instead of being dropped, because dropping them would estimate
P(weak worse | they differ), inflating scores on easy prompts where both are right
and losing the calibration `strong_share` relies on. (Down-weighting them to 0.5
changed APGR by under 0.01 on both evaluations.)

Model: L2-regularised logistic regression (scikit-learn, lbfgs) over 2^15 hashed
word/bigram/char-4-gram weights plus 15 standardised dense features. Calibration
quantiles come from 5-fold out-of-fold scores on the training prompts, so they
describe unseen prompts rather than the fitted ones.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import data as D  # noqa: E402
import features as F  # noqa: E402
import model_file  # noqa: E402

SEED = 20261201
TABLE_BITS = 15
C = 0.3
N_QUANTILES = 101
MIN_BUCKET_CALIBRATION = 50


def featurize(prompts):
    return [F.extract(p) for p in prompts]


def design(ex, idx, bits):
    """Sparse design matrix: hashed table columns then raw dense features."""
    mask = (1 << bits) - 1
    r, c, v = [], [], []
    for row, i in enumerate(idx):
        for hashes in ex[i][1]:
            if hashes:
                w = 1.0 / np.sqrt(len(hashes))
                for h in hashes:
                    r.append(row)
                    c.append(h & mask)
                    v.append(w)
    hashed = sp.csr_matrix((v, (r, c)), shape=(len(idx), 1 << bits))
    hashed.sum_duplicates()
    dense = np.array([ex[i][0] for i in idx], dtype=np.float64).reshape(len(idx), F.N_DENSE)
    return hashed, dense


def fit(ex, labels, idx, bits=TABLE_BITS, c=C):
    """Fit on rows idx; returns the exported parameters (bias, dense_w, table) as f32 lists."""
    hashed, dense = design(ex, idx, bits)
    mu = dense.mean(axis=0)
    sd = dense.std(axis=0)
    sd[sd < 1e-9] = 1.0
    x = sp.hstack([hashed, sp.csr_matrix((dense - mu) / sd)]).tocsr()
    y = np.asarray(labels)[idx]
    lr = LogisticRegression(C=c, max_iter=5000, random_state=SEED)
    lr.fit(x, y)
    coef = lr.coef_[0]
    table = coef[: 1 << bits]
    dw = coef[1 << bits :] / sd
    bias = float(lr.intercept_[0] - np.dot(dw, mu))
    f32 = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)  # noqa: E731
    return {"bits": bits, "bias": float(np.float32(bias)), "dense_w": list(f32(dw)), "table": list(f32(table))}


def logits(params, ex, idx):
    """Exactly the scorer's arithmetic (model_file.Model.logit_of) for exported parameters."""
    m = model_file.Model.__new__(model_file.Model)
    m.table_bits, m.bias, m.dense_w, m.table = params["bits"], params["bias"], params["dense_w"], params["table"]
    return np.array([m.logit_of(ex[i][0], ex[i][1]) for i in idx])


def scores(params, ex, idx):
    return np.array([model_file.sigmoid(z) for z in logits(params, ex, idx)])


def quantiles_of(s):
    """Entry i: the threshold sending share i/(Q-1) of these scores to strong."""
    shares = np.linspace(0.0, 1.0, N_QUANTILES)
    q = np.quantile(np.asarray(s, dtype=np.float64), 1.0 - shares)
    q = np.minimum.accumulate(q.astype(np.float32))  # non-increasing after rounding to f32
    return [float(v) for v in q]


def calibration(ex, labels, idx, bits, c, folds=5):
    """Out-of-fold scores of the training rows and their buckets."""
    rng = np.random.RandomState(SEED)
    idx = np.asarray(idx)
    fold = rng.permutation(len(idx)) % folds
    oof = np.zeros(len(idx))
    for k in range(folds):
        params = fit(ex, labels, idx[fold != k], bits, c)
        oof[fold == k] = scores(params, ex, idx[fold == k])
    buckets = np.array([ex[i][2] for i in idx])
    return oof, buckets


def train(ex, labels, idx, bits=TABLE_BITS, c=C):
    params = fit(ex, labels, idx, bits, c)
    oof, buckets = calibration(ex, labels, idx, bits, c)
    glob_q = quantiles_of(oof)
    bucket_q, counts = [], []
    for b in range(len(F.BUCKET_NAMES)):
        sel = oof[buckets == b]
        counts.append(int(len(sel)))
        bucket_q.append(quantiles_of(sel) if len(sel) >= MIN_BUCKET_CALIBRATION else glob_q)
    params.update(quantiles=glob_q, bucket_quantiles=bucket_q, bucket_counts=counts)
    return params


def save(params, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return model_file.write(
        path,
        params["bits"],
        params["bias"],
        params["dense_w"],
        params["table"],
        params["quantiles"],
        params["bucket_quantiles"],
        params["bucket_counts"],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CSV file or directory of CSV files (see router/data.py)")
    ap.add_argument("--out", required=True, help="model file to write")
    ap.add_argument("--table-bits", type=int, default=TABLE_BITS)
    ap.add_argument("--c", type=float, default=C, help="inverse L2 strength")
    ap.add_argument(
        "--all", action="store_true", help="train on every prompt (default: leave the fixed 20%% held out for eval)"
    )
    a = ap.parse_args()
    rows = D.load(a.data)
    ex = featurize(rows.prompts)
    idx = [i for i, p in enumerate(rows.prompts) if a.all or not D.is_held_out(p)]
    params = train(ex, rows.label, idx, a.table_bits, a.c)
    size = save(params, a.out)
    print(f"{a.out}: {size} bytes, trained on {len(idx)} of {len(rows.prompts)} prompts")


if __name__ == "__main__":
    main()
