"""What every kind of test may ask for: the throwaway PostgreSQL server (`tests.pg`), the
throwaway Prometheus server (`tests.prom`) and the test hosts (`tests.hosts.fixtures`: the
fleet is made only by a test that asks for it)."""

pytest_plugins = ["tests.pg", "tests.prom", "tests.hosts.fixtures"]
