"""`make test` and `.ci/run` on a fresh machine: what they install, start and create.

`.ci/servers` and `.ci/test-tools` run for real, with the system tools they call
(`pg_lsclusters`, `pg_ctlcluster`, `mariadb`, `apt-get`, `id`, ...) replaced by scripts
on PATH that record how they were called and play a machine where nothing runs yet:
no server is started and nothing is installed here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def shims(directory: Path, scripts: dict[str, str]) -> Path:
    """Executables in `directory`, each a bash script body by its name; every call is
    appended to `calls.log` there."""
    directory.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = directory / name
        path.write_text(f'#!/bin/bash\necho "{path.name} $*" >> "{directory}/calls.log"\n{body}\n')
        path.chmod(0o755)
    return directory


#: The brokers' overrides: the tests of the database servers leave the brokers alone.
ELSEWHERE_BROKERS = {
    "FULFILLMENT_TEST_AMQP_URL": "amqp://elsewhere/",
    "FULFILLMENT_TEST_NATS_URL": "nats://elsewhere",
}


def run_script(
    script: str, bin_dir: Path, *args: str, brokers: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `.ci/SCRIPT`; `brokers`: also let it see to the brokers (else overridden)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FULFILLMENT_TEST_", "CI"))}
    if not brokers:
        environ.update(ELSEWHERE_BROKERS)
    environ.update(env, PATH=f"{bin_dir}:/usr/bin:/bin")
    return subprocess.run(
        [str(ROOT / ".ci" / script), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def calls(bin_dir: Path) -> list[str]:
    log = bin_dir / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_make_test_installs_the_bench_extra_and_the_test_tools() -> None:
    plan = subprocess.run(
        ["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "pip install --quiet -e '.[dev,bench]'" in plan
    assert plan.index(".ci/test-tools") < plan.index("pytest")


@pytest.mark.parametrize(
    ("clusters", "started"),
    [
        ("13 main 5433 down\n15 main 5434 down\n9.6 main 5435 down", "15 main"),  # newest main
        ("12 main 5432 down\n16 main 5433 down", "12 main"),  # the one on the tests' port
        ("16 extra 5440 down\n10 other 5441 down", "16 extra"),  # no main: the newest
    ],
)
def test_ci_servers_starts_a_postgresql_cluster_of_those_installed(
    tmp_path: Path, clusters: str, started: str
) -> None:
    up = tmp_path / "postgresql-up"
    (tmp_path / "clusters").write_text(clusters + "\n")
    bin_dir = shims(
        tmp_path / "bin",
        {
            "pg_isready": f'[ -e "{up}" ]',
            "pg_lsclusters": f'cat "{tmp_path}/clusters"',
            "pg_ctlcluster": f'touch "{up}"',
            "psql": "exit 0",
            "mariadb-admin": "exit 0",
            "mariadb": "exit 0",
        },
    )
    done = run_script("servers", bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pg_ctlcluster --skip-systemctl-redirect {started} start" in calls(bin_dir)
    assert f"ci: starting PostgreSQL {started}" in done.stdout


def test_ci_servers_starts_mariadb_and_creates_the_tests_user_and_database(
    tmp_path: Path,
) -> None:
    up, provisioned = tmp_path / "mariadb-up", tmp_path / "provisioned"
    bin_dir = shims(
        tmp_path / "bin",
        {
            "pg_isready": "exit 0",
            "psql": "exit 0",
            "install": "exit 0",
            "start-stop-daemon": f'touch "{up}"',
            "mariadb-admin": f'[ -e "{up}" ]',
            # Over TCP as root@127.0.0.1 into `test`: refused until provisioned; over the
            # socket (no -h), the SQL it is given is recorded.
            "mariadb": (
                f'if [ "$1" = "-h" ]; then [ -e "{provisioned}" ]; exit; fi\n'
                f'cat >> "{tmp_path}/bin/sql.log"; touch "{provisioned}"'
            ),
        },
    )
    done = run_script("servers", bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(c.startswith("start-stop-daemon --start --oknodo") for c in calls(bin_dir))
    sql = (bin_dir / "sql.log").read_text()
    assert "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'" in sql
    assert "CREATE DATABASE IF NOT EXISTS test" in sql
    # Run again on the provisioned machine: nothing is started or created.
    (bin_dir / "calls.log").unlink()
    again = run_script("servers", bin_dir)
    assert again.returncode == 0 and "ci:" not in again.stdout, again.stdout
    assert not any(c.startswith("start-stop-daemon") for c in calls(bin_dir))
    assert (bin_dir / "sql.log").read_text() == sql


def test_ci_servers_leaves_overridden_servers_alone(tmp_path: Path) -> None:
    bin_dir = shims(tmp_path / "bin", {"pg_isready": "exit 1", "mariadb-admin": "exit 1"})
    done = run_script(
        "servers",
        bin_dir,
        FULFILLMENT_TEST_POSTGRES_URL="postgresql://elsewhere/db",
        FULFILLMENT_TEST_MYSQL_URL="mysql://elsewhere/db",
    )
    assert done.returncode == 0, done.stderr
    assert calls(bin_dir) == []


def test_ci_servers_starts_rabbitmq_and_nats_when_they_do_not_answer(tmp_path: Path) -> None:
    rabbit, nats = tmp_path / "rabbit-up", tmp_path / "nats-up"
    bin_dir = shims(
        tmp_path / "bin",
        {
            "pg_isready": "exit 0",
            "psql": "exit 0",
            "mariadb-admin": "exit 0",
            "mariadb": "exit 0",
            "install": "exit 0",
            # The port probe: `timeout 2 bash -c "exec 3<>/dev/tcp/HOST/PORT"`.
            "timeout": (
                f'case "$*" in *5672*) [ -e "{rabbit}" ];; *4222*) [ -e "{nats}" ];; '
                "*) exit 1;; esac"
            ),
            "rabbitmq-server": f'touch "{rabbit}"',
            "nats-server": "exit 0",
            "start-stop-daemon": f'touch "{nats}"',
        },
    )
    done = run_script("servers", bin_dir, brokers=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ci: starting RabbitMQ" in done.stdout and "ci: starting NATS" in done.stdout
    assert "rabbitmq-server -detached" in calls(bin_dir)
    started = [c for c in calls(bin_dir) if c.startswith("start-stop-daemon")]
    assert len(started) == 1 and "-js" in started[0] and "-p 4222" in started[0], started
    # Both answer now: run again, nothing is started.
    (bin_dir / "calls.log").unlink()
    again = run_script("servers", bin_dir, brokers=True)
    assert again.returncode == 0 and "ci:" not in again.stdout, again.stdout
    assert not any(c.startswith(("rabbitmq-server", "start-stop-daemon")) for c in calls(bin_dir))


def test_test_tools_says_which_tests_skip_without_what(tmp_path: Path) -> None:
    bin_dir = shims(tmp_path / "bin", {"id": "echo 1000", "apt-get": "exit 1"})
    chromium = tmp_path / "no-chromium"
    done = run_script("test-tools", bin_dir, FULFILLMENT_TEST_CHROMIUM=str(chromium))
    assert done.returncode == 0, done.stderr
    assert f"tests/e2e/test_dashboard_browser.py will skip: no {chromium}" in done.stderr
    assert "tests/e2e/test_partition.py will skip: it needs root" in done.stderr
    assert not any(c.startswith("apt-get") for c in calls(bin_dir)), "not root: no install"
    in_ci = run_script("test-tools", bin_dir, FULFILLMENT_TEST_CHROMIUM=str(chromium), CI="true")
    assert in_ci.returncode == 1, in_ci.stderr


def test_test_tools_installs_chromium_as_root(tmp_path: Path) -> None:
    chromium = tmp_path / "chromium"
    bin_dir = shims(
        tmp_path / "bin",
        {
            "id": "echo 0",
            "ip": "exit 0",
            "apt-get": f'if [ "$1" = install ]; then touch "{chromium}"; chmod +x "{chromium}"; fi',
        },
    )
    done = run_script("test-tools", bin_dir, FULFILLMENT_TEST_CHROMIUM=str(chromium), CI="true")
    assert done.returncode == 0, done.stderr
    assert "apt-get install -y -qq chromium" in calls(bin_dir)
    assert "will skip" not in done.stderr
    checked = run_script("test-tools", bin_dir, "--check", FULFILLMENT_TEST_CHROMIUM=str(chromium))
    assert checked.returncode == 0 and checked.stderr == ""
