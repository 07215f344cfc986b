"""A throwaway PostgreSQL server for the tests: initdb into a temporary directory, `postgres` on
127.0.0.1 (or inside a network namespace, at its address) on a free port, an emptied database
per test, stopped with `pg_ctl stop` at the end."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from harness.netns import in_namespace
from harness.procs import freeze, thaw
from harness.service import free_port

# Debian's layout: one directory per major version, side by side.
BINARY_DIRS = "/usr/lib/postgresql/*/bin"
# initdb and postgres refuse to run as root; Debian's package makes this user.
SERVER_USER = "postgres"
SUPERUSER = "postgres"


def server_binaries() -> Path:
    """The newest installed server's bin directory (`make test` installs one if none is)."""
    found = [path.parent for path in Path("/").glob(BINARY_DIRS.lstrip("/") + "/postgres")]
    if not found:
        raise RuntimeError(f"no PostgreSQL server in {BINARY_DIRS}: `make test` installs one")
    return max(found, key=lambda bin_dir: _version(bin_dir.parent.name))


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@dataclass
class PostgresServer:
    """One server, its data and socket in a directory of its own, in its own process group."""

    base_dir: Path | None = None
    # False (tests): fsync off, since a test server's data is thrown away. True (benchmarks):
    # the server's defaults, so commits cost what they cost in production.
    durable: bool = False
    port: int = field(default_factory=free_port)
    # Inside the network namespace `netns`, listening at its address `host`, trusting the
    # clients of `trusted_network` (pg_hba) beside loopback's.
    host: str = "127.0.0.1"
    netns: str | None = None
    trusted_network: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    _frozen: list[int] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def start(self, timeout: float = 60) -> PostgresServer:
        """initdb (the first time), then the server; returns once it accepts connections."""
        bin_dir = server_binaries()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._give_to_server_user(self.base_dir)
        if not (self.data_dir / "PG_VERSION").exists():  # else: started again after a stop
            self._run(
                [
                    str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                    "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
                ]
            )  # fmt: skip
            if self.trusted_network is not None:
                with open(self.data_dir / "pg_hba.conf", "a") as hba:
                    hba.write(f"host all all {self.trusted_network} trust\n")
        self._log = open(self.base_dir / "server.log", "ab")  # noqa: SIM115 - closed by stop
        options = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.base_dir),
        }
        if not self.durable:
            options |= {"fsync": "off", "full_page_writes": "off"}
        command = [
            str(bin_dir / "postgres"), "-D", str(self.data_dir),
            *(arg for name, value in options.items() for arg in ("-c", f"{name}={value}")),
        ]  # fmt: skip
        as_user = self._as_server_user()
        if self.netns is not None:
            # `ip netns exec` needs root: the server user is taken after it, by setpriv.
            command = in_namespace(self.netns, [*self._setpriv(), *command])
            as_user = {}
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped by that id, never by name
            **as_user,
        )
        self._wait_ready(bin_dir, timeout)
        return self

    def _wait_ready(self, bin_dir: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited early; see {self.base_dir}/server.log")
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not get ready; see {self.base_dir}/server.log")

    def empty_database(self, name: str = "tests") -> str:
        """The URL of database `name`, emptied: every connection to it ended, its schema
        dropped and made anew. Measured here: 50-80 ms with the store's migration after it,
        against 115-360 ms to CREATE and DROP a database per test."""
        with psycopg.connect(self.url(), autocommit=True) as admin:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
            else:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(self.url(name), autocommit=True) as db:
            db.execute("DROP SCHEMA IF EXISTS public CASCADE")
            db.execute("CREATE SCHEMA public")
        return self.url(name)

    def freeze(self) -> None:
        """Stop every server process where it is (`harness.procs.freeze`): its sockets stay
        open, the kernel still acknowledges what arrives, and nothing answers."""
        assert self.process is not None
        self._frozen = freeze(self.process.pid)

    def thaw(self) -> None:
        assert self.process is not None
        thaw(self.process.pid, self._frozen)

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: clients are disconnected, the server exits at once."""
        if self.process is not None and self.process.poll() is None:
            self._run(
                [str(server_binaries() / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast"],
                check=False,
            )
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)  # its own group, by id
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def remove(self) -> None:
        self.stop()
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _run(self, command: list[str], check: bool = True) -> None:
        assert self.base_dir is not None
        done = subprocess.run(
            command, capture_output=True, cwd=self.base_dir, check=False, **self._as_server_user()
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.decode(errors='replace')}")

    @staticmethod
    def _as_server_user() -> dict[str, Any]:
        """Popen arguments that drop root for the server user (a no-op for anyone else)."""
        if os.geteuid() != 0:
            return {}
        user = pwd.getpwnam(SERVER_USER)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    @staticmethod
    def _setpriv() -> list[str]:
        """The command prefix that drops root for the server user (none for anyone else)."""
        if os.geteuid() != 0:
            return []
        user = pwd.getpwnam(SERVER_USER)
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]

    @staticmethod
    def _give_to_server_user(path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(path, user.pw_uid, user.pw_gid)
