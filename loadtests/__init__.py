"""Load tests for scorehost: Locust profiles (run.py) and the side-by-side benchmark (compare.py).

See docs/loadtests.md.
"""
