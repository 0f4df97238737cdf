"""The Python scorer (router/model_file.py) reproduces the committed parity fixture.

The Rust side checks the same fixture (`learned::tests::parity_with_python_fixture`),
so a change to the features or the scorer on either side fails one of the two.
Standard library only; runs without Envoy in about a second.
"""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "router"))

import features  # noqa: E402
import model_file  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "learned", "parity.jsonl")
MODEL = os.path.join(ROOT, "router", "models", "default.sblr")


def cases():
    with open(FIXTURE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_python_scores_and_buckets_match_the_fixture_on_over_1000_prompts():
    model = model_file.Model.load(MODEL)
    rows = cases()
    assert len(rows) >= 1000
    for row in rows:
        assert model.score(row["prompt"]) == pytest.approx(row["score"], abs=1e-5), row["prompt"][:80]
        assert features.bucket_of(row["prompt"]) == row["bucket"], row["prompt"][:80]


def test_damaged_model_files_are_refused():
    with open(MODEL, "rb") as fh:
        blob = bytearray(fh.read())
    blob[100] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        model_file.Model(bytes(blob))
    with pytest.raises(ValueError, match="magic"):
        model_file.Model(b"nope" * 10)
