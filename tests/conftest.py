import os

from hypothesis import HealthCheck, settings

# CI runs a bounded number of examples; locally `HYPOTHESIS_PROFILE=thorough`.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    # tests/robust: the fuzzer, the random-sequence runner and the two-thread
    # hammer run a few seconds by default; --long scales them to nightly size.
    parser.addoption("--long", action="store_true", default=False,
                     help="run tests/robust at nightly size (fuzz calls, random ops, hammer time)")
