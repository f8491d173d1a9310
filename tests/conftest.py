# Shared fixtures live in their own modules; import them here so every test can use them.
from collections.abc import Iterator

import pytest

from tests.federation import Federation, Setup, refusing_address
from tests.fsfixtures import *  # noqa: F403
from tests.pkifixtures import *  # noqa: F403
from tests.pkifixtures import FederationPki
from tests.sharefixtures import *  # noqa: F403


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    """What the module's ``fed`` is; a module overrides this fixture to set its own nodes,
    holdings and options (tests/federation.py ``Setup``)."""
    return Setup()


@pytest.fixture(scope="module")
def fed(
    federation_setup: Setup, tmp_path_factory: pytest.TempPathFactory, pki: FederationPki
) -> Iterator[Federation]:
    """The module's federation: real nodes and a coordinator on 127.0.0.1, shared by its tests."""
    with Federation(tmp_path_factory.mktemp("federation"), pki, federation_setup) as federation:
        yield federation


@pytest.fixture
def nowhere() -> Iterator[str]:
    """An address on 127.0.0.1 where nothing listens while the test runs (refusing_address)."""
    with refusing_address() as address:
        yield address
