# Shared fixtures live in their own modules; import them here so every test can use them.
from tests.fsfixtures import *  # noqa: F403
from tests.pkifixtures import *  # noqa: F403
