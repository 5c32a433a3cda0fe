"""The tracking store behind MLFLOW_TRACKING_URI, guarded: a local SQLite file, a tracking server,
or a database server (PostgreSQL, MySQL) shared by several machines.

- `mask(uri)`: the URI as fsl prints and logs it, its password replaced by `***`.
- `check(uri)`: fails in seconds, in one line naming the (masked) URI, where runs could not be
  recorded: a database driver that is not installed (naming the package), a server that does not
  answer, a file that is not a database.
- `lock(uri)`: the lock under which a fresh store's schema and experiments are created, so that
  two processes starting at once do not race: a file lock beside a SQLite store, an advisory lock
  inside a PostgreSQL one (held on a connection of its own), none elsewhere.
- `is_down(exc)`: whether an error says the store stopped answering (a server stopped mid-run),
  so that the command ends in one line and the run is ended once the store is back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit, urlunsplit

from fsl.errors import FslError, UsageError

# The DB-API module SQLAlchemy 2.1 loads for a URI's dialect (and driver, where one is named), and
# the package that provides it. `postgresql://` means psycopg 3 in SQLAlchemy 2.1.
DRIVERS = {
    "postgresql": ("psycopg", "psycopg[binary] (pip install 'fsl[postgres]')"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary] (pip install 'fsl[postgres]')"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "PyMySQL"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
CONNECT_TIMEOUT = 3.0      # seconds: a store that does not answer fails the command in seconds
ADVISORY_LOCK_KEY = 0x66736C  # "fsl": the PostgreSQL advisory lock around schema and experiment creation
# How each driver spells its connection timeout (seconds).
TIMEOUT_ARGUMENT = {"pg8000": "timeout"}
# Where a store's errors come from: only these are read as "the store stopped answering" (a
# BrokenPipeError of a data-loading worker, or a file lock's Timeout, is not the store).
STORE_LAYERS = {"sqlalchemy", "psycopg", "psycopg2", "pg8000", "pymysql", "MySQLdb", "pyodbc", "mlflow",
                "requests", "urllib3"}
DOWN_WORDS = ("connection refused", "could not connect", "connection is closed", "server closed the connection",
              "terminating connection", "connection timed out", "timeout expired", "max retries exceeded",
              "connection reset", "connection aborted", "network is unreachable", "can't connect",
              "lost connection", "connection to server", "the database system is")
_PASSWORD_IN_QUERY = re.compile(r"(?i)(password=)[^&]*")


def mask(uri: str) -> str:
    """`uri` with its password (if any, in the address or as `?password=`) as `***`:
    `postgresql://fsl:***@db:5432/mlflow`."""
    uri = _PASSWORD_IN_QUERY.sub(r"\1***", uri)
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
    except ValueError:  # not a URL urllib can split: hide whatever sits between ':' and '@'
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _address(uri: str) -> tuple[str, int] | None:
    """The (host, port) a TCP probe of `uri` can try, or None where the URI names its servers
    some other way (a host in the query string, several hosts, a socket folder, a bad port):
    then the driver's own connection, under its timeout, is the check."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    query = parse_qs(parts.query)
    if not parts.hostname or "," in parts.netloc or "host" in query or "unix_socket" in query:
        return None
    scheme = parts.scheme.split("+")[0]
    return parts.hostname, port or DEFAULT_PORTS.get(scheme, 443 if parts.scheme == "https" else 80)


def is_database(uri: str) -> bool:
    """A database server URI (`postgresql://...`, `mysql+pymysql://...`), not a file or a server."""
    return urlsplit(uri).scheme.split("+")[0] in DEFAULT_PORTS


def check(uri: str) -> None:
    """UsageError (or FslError) in one line, within seconds, where `uri` cannot record runs."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(uri)
    elif is_database(uri):
        _check_database(uri)


def _check_server(uri: str) -> None:
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT).read()
    except OSError as exc:
        raise UsageError(f"MLflow tracking server {mask(uri)} is unreachable ({getattr(exc, 'reason', exc)}); "
                         f"check MLFLOW_TRACKING_URI") from None


def _check_sqlite(uri: str) -> None:
    """The database opens (its schema is created under the lock) and the folders that will
    hold it and the artifacts (./mlruns) can be written."""
    from mlflow.tracking import MlflowClient

    db = Path(uri[len("sqlite:///"):])
    for folder in (db.parent, Path("mlruns") if Path("mlruns").exists() else Path.cwd()):
        if not os.access(folder, os.W_OK):
            raise FslError(f"tracking store {uri}: cannot write to {folder.resolve()}; run from a writable "
                           f"folder or set MLFLOW_TRACKING_URI")
    try:
        with lock(uri):
            MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # SQLAlchemy, sqlite3 and MLflow errors all mean "not a usable store"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FslError(f"tracking store {db}: cannot be used as an MLflow database ({first[:200]}); "
                       f"move it aside or set MLFLOW_TRACKING_URI") from None


def _check_database(uri: str) -> None:
    """The driver is installed, the server answers within CONNECT_TIMEOUT, and the store opens:
    its schema is created (or migrated) under `lock`, so two processes starting on a fresh
    database do not race."""
    from mlflow.tracking import MlflowClient

    scheme = urlsplit(uri).scheme
    module, package = DRIVERS.get(scheme, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        raise UsageError(f"tracking store {mask(uri)}: its database driver {module!r} is not installed; "
                         f"install {package}")
    address = _address(uri)
    try:
        if address is not None:
            socket.create_connection(address, timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise FslError(f"tracking store {mask(uri)} is unreachable ({exc.strerror or exc}); start the database "
                       f"or check MLFLOW_TRACKING_URI") from None
    try:
        with lock(uri):
            MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # the driver's, SQLAlchemy's and MLflow's errors: one line, never the password
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FslError(f"tracking store {mask(uri)}: cannot be used ({_scrub(first, uri)[:200]})") from None


@contextlib.contextmanager
def lock(uri: str) -> Iterator[None]:
    """Exclusive, across processes (and, for PostgreSQL, machines), for creating a fresh store's
    schema and experiments: a file lock beside a SQLite file (`mlflow.db.lock`, git-ignored), a
    PostgreSQL advisory lock (released with its connection, also if this process dies), none for
    other stores."""
    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        lock_path = Path(uri[len("sqlite:///"):]).with_suffix(".db.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path):
            yield
        return
    if urlsplit(uri).scheme.split("+")[0] != "postgresql":
        yield
        return
    import sqlalchemy

    driver = urlsplit(uri).scheme.partition("+")[2]
    timeout = TIMEOUT_ARGUMENT.get(driver, "connect_timeout")
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={timeout: int(CONNECT_TIMEOUT)})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY})"))
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY})"))
    finally:
        engine.dispose()


def is_down(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the store stopped answering: an error of the store's
    layers (`STORE_LAYERS`: a database driver, SQLAlchemy, MLflow's REST client) whose message
    says a connection was refused, closed or timed out. Errors of anything else are not the
    store's, whatever their type."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        layer = type(exc).__module__.split(".")[0]
        if layer in STORE_LAYERS and any(word in str(exc).lower() for word in DOWN_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def wait_until_up(uri: str, seconds: float) -> bool:
    """Whether the store answers (a TCP connection to a database or server) within `seconds`."""
    address = None if uri.startswith("sqlite") else _address(uri)
    if address is None:
        return True
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(address, timeout=CONNECT_TIMEOUT).close()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)


def password(uri: str) -> str | None:
    """The password in a store URI, if any (what fsl never prints)."""
    try:
        secret = urlsplit(uri).password
    except ValueError:
        secret = None
    if secret is None:
        found = parse_qs(uri.partition("?")[2]).get("password")
        secret = found[0] if found else None
    return secret


def _scrub(text: str, uri: str) -> str:
    """`text` without the URI's password, wherever a driver repeated it."""
    secret = password(uri)
    return _PASSWORD_IN_QUERY.sub(r"\1***", text.replace(secret, "***") if secret else text)
