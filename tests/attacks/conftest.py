from tests.mounted.conftest import plain_vault  # noqa: F401 - the shared fixture
