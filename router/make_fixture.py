"""Write the parity fixture: prompts with the Python scorer's score and bucket.

    python router/make_fixture.py --data ../shared/data/routellm-mmlu \
        --model router/models/default.sblr --out tests/fixtures/learned/parity.jsonl

The prompts are the first 1,200 held-out MMLU prompts (by a salted hash, so the
choice is stable) plus hand-written edge cases (code, maths, non-Latin scripts,
empty, over the scan limit, ...). Rust (`learned::tests::parity_with_python_fixture`)
and pytest (tests/test_learned_parity.py) both check their scorer against it.
Standard library only.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import data as D  # noqa: E402
import features as F  # noqa: E402
import model_file  # noqa: E402

N_HELD_OUT = 1200

EDGE_CASES = [
    "",
    " ",
    "?",
    "hi",
    "Why?",
    "HOW DO I FIX THIS",
    "What is 2+2?\nA. 3\nB) 4\n  C. 5\nJ) none\nAnswer:",
    "def f(x):\n    return {k: v for k, v in x.items() if v[0] > 1}  # comment\n",
    "fn main() { let v: Vec<u8> = vec![1, 2, 3]; println!(\"{:?}\", v); }",
    "```python\nimport numpy as np\nprint(np.__version__)\n```",
    "Solve for x: 3x^2 + 2x - 5 = 0, then compute |x1 - x2| / 2.",
    "$\\int_0^1 x^2 \\, dx = \\frac{1}{3}$",
    "Évaluez l'intégrale : ∫₀¹ x² dx. Quelle est la réponse ?",
    "東京の人口は何人ですか？",
    "Как дела? Расскажи анекдот про программистов.",
    "emoji 🚀🚀 rocket 🚀 and café naïve façade",
    "tabs\tand\r\nwindows\r\nline endings\r\n",
    "a" * 100,
    "supercalifragilisticexpialidocious-antidisestablishmentarianism " * 3,
    "1234567890 " * 50,
    "word " * 4000,  # over the scan limit
    "x" * 20000,
    "Summarise the following meeting notes for a status update: " + "the team shipped the release " * 40,
    "Write a haiku about autumn.",
    "Translate to German: The quick brown fox jumps over the lazy dog.",
    "Which of the following best explains why the sky is blue?\nA. Rayleigh scattering\nB. Reflection\n",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name; -- top_users",
    "Is it true that P = NP? Explain.",
    "under_score snake_case_name __init__ #hashtag [brackets]",
    "\n\n\n",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = D.load(a.data)
    held = sorted({p for p in rows.prompts if D.is_held_out(p)}, key=lambda p: F.fnv(p.encode("utf-8")))
    prompts = held[:N_HELD_OUT] + EDGE_CASES
    model = model_file.Model.load(a.model)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as fh:
        for p in prompts:
            fh.write(json.dumps({"prompt": p, "score": model.score(p), "bucket": F.bucket_of(p)}) + "\n")
    print(f"{a.out}: {len(prompts)} prompts")


if __name__ == "__main__":
    main()
