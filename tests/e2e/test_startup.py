"""Start-up errors, as an operator meets them: `fulfillment migrate`, `serve` and `worker`
(and the read commands) on a database they cannot use say so in one line, with the URL's
password masked and what to do, and exit non-zero; `--debug` adds the traceback. A
configuration error reads `error: configuration: ...` (exit 2) from every command, and
`serve` on a port that is taken says so before it claims to serve.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import TEST_MASTER_KEY
from sqlalchemy.engine import make_url

from .test_patient_data_cli import environment as bare_environment
from .test_patient_data_cli import run

PASSWORD = "s3cret-pw"
START_COMMANDS = [("migrate",), ("worker",), ("serve", "--port", "0")]


def environment(url: str, **more: str) -> dict[str, str]:
    """The caller's environment with `url`, `more` and the tests' master key (only)."""
    return bare_environment(url, **{"FULFILLMENT_MASTER_KEY": TEST_MASTER_KEY, **more})


def closed_port() -> int:
    """A local port nothing listens on (bound and released: the kernel does not hand it
    out again at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def one_error_line(output: str) -> str:
    """The only line `output` has: an `error:` line, without a traceback."""
    lines = lines_of(output)
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def without(url: str, database: str) -> str:
    """`url` naming another database."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def test_migrate_on_a_refused_connection_says_so_with_the_password_masked(tmp_path: Path) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/fulfillment"
    line = one_error_line(run("migrate", env=environment(url), cwd=tmp_path, expect=1))
    assert line.startswith("error: database: cannot connect to postgresql://postgres:***@")
    assert "connection refused" in line and "is the server running" in line
    assert PASSWORD not in line


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("args", START_COMMANDS)
def test_a_database_that_does_not_exist_stops_each_process_in_one_line(
    fresh_database_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    missing = make_url(fresh_database_url).database + "_gone"  # type: ignore[operator]
    url = without(fresh_database_url, missing)
    line = one_error_line(run(*args, env=environment(url), cwd=tmp_path, expect=1))
    assert f"database {missing!r} does not exist" in line
    assert "create it with `fulfillment migrate --create-database`" in line


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("args", START_COMMANDS)
def test_a_refused_login_stops_each_process_in_one_line(
    fresh_database_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    # PostgreSQL trusts 127.0.0.1 here, whatever the password: an unknown role, then.
    user = "fs_nobody" if fresh_database_url.startswith("postgresql") else "root"
    url = make_url(fresh_database_url).set(username=user, password=PASSWORD)
    shown = url.render_as_string(hide_password=False)
    line = one_error_line(run(*args, env=environment(shown), cwd=tmp_path, expect=1))
    assert "refused the login" in line
    assert "check the user and password in FULFILLMENT_DATABASE_URL" in line
    assert PASSWORD not in line


@pytest.mark.parametrize("args", [*START_COMMANDS, ("orders", "list")])
@pytest.mark.parametrize(
    "url", ["bogus://somewhere/db", "postgresql+nodriver://h/db", "not a url at all"]
)
def test_a_wrong_url_is_a_configuration_error(
    tmp_path: Path, args: tuple[str, ...], url: str
) -> None:
    line = one_error_line(run(*args, env=environment(url), cwd=tmp_path, expect=2))
    assert line.startswith("error: configuration: FULFILLMENT_DATABASE_URL")
    assert "sqlite:///path, postgresql://user@host/db or mysql://user@host/db" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_is_an_alias_of_postgresql(fresh_database_url: str, tmp_path: Path) -> None:
    url = make_url(fresh_database_url).set(drivername="postgres").render_as_string(False)
    assert url.startswith("postgres://")
    out = run("migrate", env=environment(url), cwd=tmp_path)
    assert "schema at revision" in out
    assert (
        "orders" in lines_of(run("orders", "list", env=environment(url), cwd=tmp_path))[0].lower()
    )


@pytest.mark.parametrize("how", ["--debug before", "--debug after", "log level"])
def test_debug_shows_the_traceback_then_the_line(tmp_path: Path, how: str) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/fulfillment"
    env = environment(url)
    args = ["migrate"]
    if how == "--debug before":
        args.insert(0, "--debug")
    elif how == "--debug after":
        args.append("--debug")
    else:
        env["FULFILLMENT_LOG_LEVEL"] = "debug"
    out = run(*args, env=env, cwd=tmp_path, expect=1)
    assert "Traceback (most recent call last)" in out
    assert "OperationalError" in out
    assert lines_of(out)[-1].startswith("error: database: cannot connect to ")


def test_orders_list_on_a_refused_connection_does_not_advise_migrate(tmp_path: Path) -> None:
    for url in (
        f"postgresql://postgres@127.0.0.1:{closed_port()}/fulfillment",
        f"mysql://root@127.0.0.1:{closed_port()}/fulfillment",
    ):
        line = one_error_line(run("orders", "list", env=environment(url), cwd=tmp_path, expect=1))
        assert "connection refused" in line and "is the server running" in line
        assert "migrate" not in line


def test_serve_on_a_port_in_use_says_so_before_it_claims_to_serve(tmp_path: Path) -> None:
    database = tmp_path / "never.db"
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run(
            "serve",
            "--port",
            str(port),
            env=environment(f"sqlite:///{database}"),
            cwd=tmp_path,
            expect=1,
        )
    line = one_error_line(out)
    assert line.startswith(f"error: port {port} on 127.0.0.1 is already in use: ")
    assert "serving on" not in out
    assert not database.exists(), "it gave up before it touched the database"


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (("migrate",), "FULFILLMENT_MAX_ATTEMPTS"),
        (("worker",), "FULFILLMENT_MAX_ATTEMPTS"),
        (("serve", "--port", "0"), "FULFILLMENT_MAX_ATTEMPTS"),
        (("orders", "list"), "FULFILLMENT_MAX_ATTEMPTS"),
        (("projections", "run"), "FULFILLMENT_MAX_ATTEMPTS"),
        (("worker",), "FULFILLMENT_LOG_FORMAT"),
        (("serve", "--port", "0"), "FULFILLMENT_LOG_LEVEL"),
    ],
)
def test_a_configuration_error_reads_the_same_from_every_command(
    tmp_path: Path, args: tuple[str, ...], setting: str
) -> None:
    wrong = {
        "FULFILLMENT_MAX_ATTEMPTS": "0",
        "FULFILLMENT_LOG_FORMAT": "xml",
        "FULFILLMENT_LOG_LEVEL": "loud",
    }[setting]
    url = f"sqlite:///{tmp_path / 'never.db'}"
    out = run(*args, env=environment(url, **{setting: wrong}), cwd=tmp_path, expect=2)
    line = one_error_line(out)
    assert line.startswith(f"error: configuration: {setting}"), line
