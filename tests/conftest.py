"""What every kind of test may ask for: the throwaway PostgreSQL server (`tests.pg`)."""

pytest_plugins = ["tests.pg"]
