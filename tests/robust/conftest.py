import pytest


@pytest.fixture
def long_mode(request):
    return request.config.getoption("--long")
