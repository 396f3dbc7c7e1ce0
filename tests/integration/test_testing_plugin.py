"""The pytest plugin as a user's test run sees it, proved with pytester in a subprocess."""

from __future__ import annotations

import textwrap

import pytest

from conveyor import Settings

pytest_plugins = ["pytester"]

STRICT_CONFIG = """
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
filterwarnings = ["error"]
"""

SERVICE_VARIABLES = (
    "CONVEYOR_KAFKA_BOOTSTRAP",
    "CONVEYOR_DATABASE_URL",
    "CONVEYOR_SCHEMA_REGISTRY_URL",
    "CONVEYOR_TEST_BROKER",
)


@pytest.fixture
def user_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An empty project with strict pytest settings and no conveyor services named."""
    pytester.makepyprojecttoml(STRICT_CONFIG)
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return pytester


@pytest.fixture
def services_in_env(
    user_project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    database_url: str,
    schema_registry_url: str,
) -> pytest.Pytester:
    """The project, with the session's services named by the environment."""
    monkeypatch.setenv("CONVEYOR_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", database_url)
    monkeypatch.setenv("CONVEYOR_SCHEMA_REGISTRY_URL", schema_registry_url)
    return user_project


USER_HANDLERS = """
from conveyor import AsyncProducer, JobContext, PermanentError, Worker, WorkerOptions
from conveyor.testing import WaitTimeoutError, drain, wait_for
import pytest


def make_worker(settings):
    worker = Worker(settings, priorities=["high"], options=WorkerOptions(commit_interval=0.1))

    @worker.handler("greet.user")
    async def greet(ctx: JobContext, payload: dict) -> str:
        if payload["name"] == "nobody":
            raise PermanentError("no such user")
        return "hello " + payload["name"]

    return worker
"""


def test_the_plugin_is_inert_for_a_suite_that_uses_none_of_its_fixtures(
    user_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded, but nothing starts; a suite's own ``settings`` and ``db`` fixtures still win."""
    monkeypatch.setenv("CONVEYOR_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens here
    user_project.makeconftest(
        """
        import pytest

        @pytest.fixture
        def settings():
            return "the suite's own settings"

        @pytest.fixture
        def db():
            return "the suite's own db"
        """
    )
    user_project.makepyfile(
        """
        async def test_own_fixtures(settings, db, request):
            assert request.config.pluginmanager.has_plugin("conveyor")
            assert (settings, db) == ("the suite's own settings", "the suite's own db")
        """
    )
    result = user_project.runpytest_subprocess("--setup-show")
    result.assert_outcomes(passed=1)
    assert "conveyor_" not in result.stdout.str()


def test_a_real_stack_test_runs_a_worker_and_waits_for_its_jobs(
    services_in_env: pytest.Pytester,
) -> None:
    services_in_env.makepyfile(
        test_greet=USER_HANDLERS
        + textwrap.dedent(
            """
            async def test_greets(conveyor_settings, conveyor_worker):
                worker = await conveyor_worker(make_worker(conveyor_settings))
                assert worker.joined
                async with AsyncProducer(conveyor_settings) as producer:
                    job_id = await producer.submit("greet.user", {"name": "ada"}, priority="high")
                status = await wait_for(job_id, "complete")  # the running worker's database
                assert status.result == "hello ada"
                await drain(worker)

            async def test_wait_for_says_where_a_job_ended(conveyor_settings, conveyor_worker):
                await conveyor_worker(make_worker(conveyor_settings))
                async with AsyncProducer(conveyor_settings) as producer:
                    job_id = await producer.submit(
                        "greet.user", {"name": "nobody"}, priority="high"
                    )
                with pytest.raises(WaitTimeoutError, match="ended failed"):
                    await wait_for(job_id, "complete", settings=conveyor_settings)

            def test_each_test_gets_its_own_prefix_and_schema(conveyor_settings):
                assert conveyor_settings.topic_prefix.startswith("t")
                assert conveyor_settings.database_schema.startswith("cv_")
            """
        )
    )
    result = services_in_env.runpytest_subprocess()
    result.assert_outcomes(passed=3)


def test_conveyor_db_gives_ctx_db_a_connection_rolled_back_after_the_test(
    services_in_env: pytest.Pytester,
) -> None:
    services_in_env.makepyfile(
        """
        from conveyor import JobContext, RetryPolicy, Settings, Worker
        from conveyor.testing import TestWorker

        async def test_writes_commit_with_the_job_and_roll_back_with_a_failure(conveyor_db):
            await conveyor_db.execute("CREATE TABLE outbox (job_id uuid, attempt int)")
            worker = Worker(Settings(), priorities=["normal"])

            @worker.handler("outbox.write", retry=RetryPolicy(initial=60, maximum=60))
            async def write(ctx: JobContext, payload: dict) -> None:
                await ctx.db.execute("INSERT INTO outbox VALUES ($1, $2)", ctx.job_id, ctx.attempt)
                if ctx.attempt == 1:
                    raise RuntimeError("the first attempt fails after writing")

            async with TestWorker(worker, db=conveyor_db) as tw:
                job_id = tw.producer().submit("outbox.write", {})
                await tw.settle()
                assert (await tw.status(job_id)).state == "complete"
            rows = await conveyor_db.fetch("SELECT job_id::text, attempt FROM outbox")
            assert [tuple(r) for r in rows] == [(job_id, 2)]

        async def test_nothing_of_the_previous_test_is_left(conveyor_db):
            assert await conveyor_db.fetchval("SELECT to_regclass('outbox')") is None
        """
    )
    result = services_in_env.runpytest_subprocess()
    result.assert_outcomes(passed=2)


def test_embedded_services_start_when_the_environment_names_none(
    user_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tansu, an embedded Postgres and ``conveyor registry serve``, for the session."""
    monkeypatch.setenv("CONVEYOR_TEST_BROKER", "tansu")
    user_project.makepyfile(
        test_embedded=USER_HANDLERS
        + textwrap.dedent(
            """
            async def test_greets(conveyor_settings, conveyor_worker):
                assert conveyor_settings.kafka_bootstrap != "127.0.0.1:9092"
                worker = await conveyor_worker(make_worker(conveyor_settings))
                async with AsyncProducer(conveyor_settings) as producer:
                    job_id = await producer.submit("greet.user", {"name": "bo"}, priority="high")
                status = await wait_for(job_id, "complete", settings=conveyor_settings)
                assert status.result == "hello bo"
            """
        )
    )
    result = user_project.runpytest_subprocess(timeout=300)
    result.assert_outcomes(passed=1)


def test_an_unknown_embedded_broker_is_one_clear_error(
    user_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_TEST_BROKER", "redpanda")
    user_project.makepyfile("def test_x(conveyor_kafka_bootstrap):\n    pass\n")
    result = user_project.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CONVEYOR_TEST_BROKER*redpanda*"])


def test_settings_of_the_session_come_from_the_environment() -> None:
    """Every ``CONVEYOR_*`` setting is honoured; only the test-only variable is left out."""
    from conveyor.testing.services import base_settings

    environ = {
        "CONVEYOR_KAFKA_BOOTSTRAP": "kafka.test:9093",
        "CONVEYOR_SASL_MECHANISM": "PLAIN",
        "CONVEYOR_SASL_USERNAME": "ada",
        "CONVEYOR_SASL_PASSWORD": "s3cret",
        "CONVEYOR_SECURITY_PROTOCOL": "SASL_SSL",
        "CONVEYOR_TEST_BROKER": "tansu",
    }
    settings = base_settings(environ)
    assert isinstance(settings, Settings)
    assert (settings.kafka_bootstrap, settings.sasl_username, settings.metrics_port) == (
        "kafka.test:9093",
        "ada",
        0,
    )
