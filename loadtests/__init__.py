"""Load tests for scorehost: Locust profiles (run.py) and the side-by-side benchmark (compare.py).

See docs/loadtests.md.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Every runner writes below here by default (git-ignored).
RESULTS = HERE / "results"
