from tests.test_quickstart import quickstart  # noqa: F401  (the quickstart copy, for test_quickstart_sign_in)
