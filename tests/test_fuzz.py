"""Property-based fuzzing of every public op and module (issue 16, point 1), with hypothesis.

For each entry of tests/fuzz_ops.py's CASES: valid inputs (random shapes with sizes 0 and 1, odd sizes,
non-contiguous and expanded views, every supported dtype, scalar and per-channel parameters, degenerate
Gaussians) must match the float64 reference (tests/utils.py's 3x rule, gradients included); invalid inputs (a
wrong rank, size, dtype or device, NaN/inf, out-of-range values and indices, a wrong kind) must raise TypeError /
ValueError naming the argument. The ops run in a persistent worker process (tests/fuzz_worker.py), so a crash or
hang in native code fails the one test with its input, and the worker is restarted.

Profiles (a fixed seed, so every run tries the same inputs): the default "ci" tries 200 inputs per op and case
kind; PYOPS_FUZZ=long tries 5,000 (``PYOPS_FUZZ=long pytest tests/test_fuzz.py``); PYOPS_FUZZ_EXAMPLES=N
sets the count directly.
"""

import os

import pytest
from fuzz_ops import CASES
from fuzz_worker import Worker, WorkerCrash
from hypothesis import HealthCheck, given, settings

PROFILE = os.environ.get("PYOPS_FUZZ", "ci")
EXAMPLES = {"ci": 200, "long": 5000}
settings.register_profile("pyops-fuzz", derandomize=True, database=None, deadline=None, print_blob=False,
                          max_examples=int(os.environ.get("PYOPS_FUZZ_EXAMPLES", EXAMPLES.get(PROFILE, 25))),
                          suppress_health_check=list(HealthCheck))
FUZZ = settings.get_profile("pyops-fuzz")
TRIED = {}  # (case, kind) -> inputs tried (printed at the end of the module by the fixture below)
SKIPPED = {}  # (case, "invalid") -> mutations that found nothing to corrupt (an optional argument left out)


@pytest.fixture(scope="module")
def worker():
    w = Worker(timeout=120.0)
    yield w
    w.close()
    if TRIED:
        print("\nfuzz inputs tried per op:", ", ".join(
            f"{c}/{k}: {n}" + (f" ({SKIPPED[c]} left valid)" if k == "invalid" and c in SKIPPED else "")
            for (c, k), n in sorted(TRIED.items())))


@pytest.mark.parametrize("name", sorted(CASES))
def test_valid_inputs_match_the_reference(name, worker):
    case = CASES[name]

    @FUZZ
    @given(spec=case.valid)
    def check(spec):
        TRIED[(name, "valid")] = TRIED.get((name, "valid"), 0) + 1
        worker.run(name, "valid", spec)

    check()


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n].bad))
def test_invalid_inputs_raise_named_errors(name, worker):
    from fuzz_ops import invalid

    case = CASES[name]

    @FUZZ
    @given(spec=invalid(case.valid, case.bad))
    def check(spec):
        TRIED[(name, "invalid")] = TRIED.get((name, "invalid"), 0) + 1
        if worker.run(name, "invalid", spec).get("skipped"):
            SKIPPED[name] = SKIPPED.get(name, 0) + 1

    check()


# ----------------------------------------------------------------------------------------------------------
# The worker itself: a crash or hang is a failure naming the input, and the next call gets a fresh worker.


@pytest.mark.parametrize("what,signal_name", [("abort", "SIGABRT"), ("segfault", "SIGSEGV")])
def test_worker_reports_a_crash_with_its_input(worker, what, signal_name):
    pid = worker.run("_selftest_ok", "valid", {})["pid"]
    spec = {"seed": 123, "shape": [3, 0, 5]}
    with pytest.raises(WorkerCrash) as e:
        worker.run(f"_selftest_{what}", "valid", spec)
    assert signal_name in str(e.value) and repr(spec) in str(e.value) and f"_selftest_{what}" in str(e.value)
    assert worker.run("_selftest_ok", "valid", {})["pid"] != pid  # restarted


def test_worker_reports_a_hang_and_a_failed_check(worker):
    with pytest.raises(WorkerCrash, match=r"hang.*'seed': 7"):
        worker.run("_selftest_hang", "valid", {"seed": 7}, timeout=2)
    with pytest.raises(AssertionError, match=r"deliberate failure") as e:
        worker.run("_selftest_fail", "valid", {"seed": 8})
    assert "'seed': 8" in str(e.value)
    worker.run("_selftest_ok", "valid", {})


def test_a_crash_inside_a_hypothesis_test_is_a_failure_not_a_dead_run(worker):
    """What a crashing op looks like to the fuzz tests above: hypothesis sees an AssertionError (and shrinks it)."""
    from hypothesis import strategies as st

    @settings(FUZZ, max_examples=3)
    @given(n=st.integers(0, 3))
    def check(n):
        worker.run("_selftest_abort" if n >= 2 else "_selftest_ok", "valid", {"n": n})

    with pytest.raises(WorkerCrash, match=r"SIGABRT on input \{'n': 2\}"):
        check()
