"""A throwaway private PostgreSQL server for tests and benchmarks.

:func:`start_local_postgres` (or the :func:`local_postgres` context manager) runs ``initdb``
into a fresh directory, starts ``postgres`` on a unix socket only (no TCP listener) on a
free port number, creates the database ``trioflow`` and returns a :class:`LocalPostgres`
whose :attr:`~LocalPostgres.dsn` ``psycopg.connect`` accepts. :meth:`LocalPostgres.stop`
kills the server and removes the directory.

The server is tuned for speed, not durability (``fsync=off`` and friends): never point it
at data you want to keep.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``pg_ctl``
run as the ``postgres`` system user (which Debian's ``postgresql`` package creates) through
``runuser``, the server directory is chowned to that user, and it is placed where that user
can reach it (a private pytest temporary directory is not: then a fresh directory under
``/tmp`` is used instead).

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "LocalPostgres",
    "PostgresNotFound",
    "find_postgres_bindir",
    "local_postgres",
    "start_local_postgres",
]

#: Environment variable naming a directory that holds ``initdb`` and ``pg_ctl``.
BINDIR_ENV = "TRIOFLOW_PG_BINDIR"
#: The system user the server runs as when this process is root.
SERVER_USER = "postgres"
#: The database :func:`start_local_postgres` creates (named in :attr:`LocalPostgres.dsn`).
DBNAME = "trioflow"

# sun_path is 108 bytes including the NUL; the socket file is "<dir>/.s.PGSQL.<port>".
_SOCKET_PATH_LIMIT = 107
_START_TIMEOUT = 60  # seconds pg_ctl -w waits for the server to accept connections
_LOG_TAIL_LINES = 40


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``) were found."""


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: "15", "9.6".
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_postgres_bindir() -> Path | None:
    """The directory holding PostgreSQL's server binaries, or None.

    ``$TRIOFLOW_PG_BINDIR`` when set (None if it lacks ``initdb``/``pg_ctl``: an explicit
    choice is not second-guessed), else the newest ``/usr/lib/postgresql/*/bin`` (Debian's
    layout), else the directory of ``initdb`` on ``PATH``.
    """
    configured = os.environ.get(BINDIR_ENV)
    if configured:
        bindir = Path(configured)
        return bindir if _has_server_binaries(bindir) else None
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_server_binaries(p)]
    if candidates:
        return max(candidates, key=_version_key)
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if _has_server_binaries(bindir):
            return bindir
    return None


def _free_port() -> int:
    # The server listens on a unix socket only: the port just names the socket file, so
    # a collision would need another server in the same private socket directory. A port
    # that is free on TCP keeps the number plausible for tools that print it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conninfo_value(value: str) -> str:
    # libpq conninfo quoting: single quotes, backslash-escape ' and \.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may traverse every directory from / down to ``path``."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _server_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: None means this process's own user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and PostgreSQL refuses to run as root, but there is no "
            f"{SERVER_USER!r} system user to run it as (installing Debian's postgresql "
            f"package creates one; or run the tests as an unprivileged user)"
        ) from None


def _as_user(user: pwd.struct_passwd | None, argv: Sequence[str]) -> list[str]:
    if user is None:
        return list(argv)
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", user.pw_name, "--", *argv]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [
            setpriv,
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
            *argv,
        ]
    raise RuntimeError("running as root, and neither runuser nor setpriv is available")


def _run(
    argv: Sequence[str], *, user: pwd.struct_passwd | None, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if user is not None:
        env["HOME"] = user.pw_dir
        env["USER"] = env["LOGNAME"] = user.pw_name
    return subprocess.run(
        _as_user(user, argv),
        cwd=cwd,  # a directory the server user can enter
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class LocalPostgres:
    """A running throwaway PostgreSQL server; :meth:`stop` removes every trace of it."""

    def __init__(
        self,
        *,
        dsn: str,
        data_dir: Path,
        socket_dir: Path,
        port: int,
        bindir: Path,
        owned_dirs: Sequence[Path],
        user: pwd.struct_passwd | None,
    ) -> None:
        #: libpq conninfo string for the ``trioflow`` database, as superuser ``postgres``.
        self.dsn = dsn
        self.data_dir = data_dir
        self.socket_dir = socket_dir
        self.port = port
        self.bindir = bindir
        self._owned_dirs = tuple(owned_dirs)
        self._user = user
        self._stopped = False

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "server.log"

    def dsn_for(self, dbname: str) -> str:
        """The conninfo string for another database on this server."""
        return _make_dsn(self.socket_dir, self.port, dbname)

    def stop(self) -> None:
        """Kill the server (``pg_ctl stop -m immediate``) and remove its directories.

        Idempotent; safe to call on a server that already died.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                _run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        str(_START_TIMEOUT),
                    ],
                    user=self._user,
                    cwd=self.data_dir.parent,
                    timeout=_START_TIMEOUT + 30,
                )
        finally:
            for directory in self._owned_dirs:
                shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalPostgres(dsn={self.dsn!r}, data_dir={str(self.data_dir)!r})"


def _make_dsn(socket_dir: Path, port: int, dbname: str) -> str:
    return (
        f"host={_conninfo_value(str(socket_dir))} port={port} "
        f"user={SERVER_USER} dbname={_conninfo_value(dbname)}"
    )


def _make_root(base_dir: Path | None, user: pwd.struct_passwd | None) -> Path:
    """A fresh directory for the server, reachable by ``user``."""
    if base_dir is not None:
        base_dir.mkdir(parents=True, exist_ok=True)
        if user is None or _reachable_by(base_dir.resolve(), user):
            return Path(tempfile.mkdtemp(prefix="trioflow-pg-", dir=base_dir))
    # The server user cannot reach base_dir (e.g. pytest's 0700 /tmp/pytest-of-root).
    parent = Path(tempfile.gettempdir())
    if user is not None and not _reachable_by(parent.resolve(), user):
        parent = Path("/tmp")
    return Path(tempfile.mkdtemp(prefix="trioflow-pg-", dir=parent))


def _socket_dir(root: Path, port: int) -> tuple[Path, bool]:
    """The unix socket directory, and whether it is separate from ``root``."""
    candidate = root / "s"
    if len(f"{candidate}/.s.PGSQL.{port}") <= _SOCKET_PATH_LIMIT:
        candidate.mkdir()
        return candidate, False
    return Path(tempfile.mkdtemp(prefix="tfpg-", dir="/tmp")), True


def _chown(paths: Sequence[Path], user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)
        # The data directory is created by initdb inside; mode 0755 lets the invoking
        # (root) process read the log and reach the socket.
        path.chmod(0o755)


def _create_database(bindir: Path, socket_dir: Path, port: int, cwd: Path) -> None:
    createdb = bindir / "createdb"
    if os.access(createdb, os.X_OK):
        proc = _run(
            [str(createdb), "-h", str(socket_dir), "-p", str(port), "-U", SERVER_USER, DBNAME],
            user=None,  # a client: trust auth over the socket, any OS user may connect
            cwd=cwd,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"createdb {DBNAME} failed:\n{proc.stdout}{proc.stderr}")
        return
    import psycopg  # optional dependency, needed only when createdb is missing

    with psycopg.connect(_make_dsn(socket_dir, port, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DBNAME}")


def start_local_postgres(base_dir: Path | None = None) -> LocalPostgres:
    """Start a private PostgreSQL server in a fresh directory under ``base_dir``.

    With ``base_dir=None`` (or, when root, a ``base_dir`` the ``postgres`` user cannot
    reach) the directory goes under the system temporary directory. Raises
    :class:`PostgresNotFound` without server binaries, and :class:`RuntimeError` carrying
    the tail of the server log when the server does not start.
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        configured = os.environ.get(BINDIR_ENV)
        where = (
            f"${BINDIR_ENV}={configured} has no executable initdb and pg_ctl"
            if configured
            else "no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH"
        )
        raise PostgresNotFound(f"PostgreSQL server binaries not found ({where})")
    user = _server_user()
    root = _make_root(base_dir, user)
    owned = [root]
    server: LocalPostgres | None = None
    try:
        port = _free_port()
        socket_dir, separate = _socket_dir(root, port)
        if separate:
            owned.append(socket_dir)
        _chown([root, socket_dir], user)
        data_dir = root / "data"
        log_file = root / "server.log"

        proc = _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SERVER_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            user=user,
            cwd=root,
            timeout=180,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )

        # fsync=off, synchronous_commit=off and full_page_writes=off trade crash safety for
        # speed. That is acceptable ONLY because this server is a throwaway test fixture
        # whose data is deleted on stop(); never copy these settings to a real server.
        options = " ".join(
            [
                "-k",
                shlex.quote(str(socket_dir)),
                "-p",
                str(port),
                "-c",
                "listen_addresses=''",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ]
        )
        # From here on, stop() kills whatever got started and removes the directories.
        server = LocalPostgres(
            dsn=_make_dsn(socket_dir, port, DBNAME),
            data_dir=data_dir,
            socket_dir=socket_dir,
            port=port,
            bindir=bindir,
            owned_dirs=owned,
            user=user,
        )
        proc = _run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-D",
                str(data_dir),
                "-l",
                str(log_file),
                "-o",
                options,
            ],
            user=user,
            cwd=root,
            timeout=_START_TIMEOUT + 30,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL server did not start (pg_ctl exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}\n--- tail of {log_file} ---\n{_tail(log_file)}"
            )
        try:
            _create_database(bindir, socket_dir, port, root)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- tail of {log_file} ---\n{_tail(log_file)}") from exc
        return server
    except BaseException:
        if server is not None:
            server.stop()
        else:
            for directory in owned:
                shutil.rmtree(directory, ignore_errors=True)
        raise


@contextlib.contextmanager
def local_postgres(base_dir: Path | None = None) -> Iterator[LocalPostgres]:
    """:func:`start_local_postgres`, stopped (and its directory removed) on exit."""
    server = start_local_postgres(base_dir)
    try:
        yield server
    finally:
        server.stop()
