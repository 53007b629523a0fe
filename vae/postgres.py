"""PostgreSQL for the shared services (vae/services.py): a cluster in HOME/pg, made at the first start with a
generated password that only HOME/pgpass (0600, read by libpq through PGPASSFILE) keeps, and its databases.
Run from Debian's binaries, as the `postgres` user when this runs as root."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from vae.credentials import private_file

USER = "vae"
DATABASES = ("mlflow", "mlflow_auth", "optuna")  # mlflow_auth: the users and permissions of MLflow's login


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """cmd, or one line naming what failed and why (the end of its stderr)."""
    r = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if r.returncode != 0:
        raise SystemExit(
            f"services: {Path(cmd[0]).name if cmd[0] != 'runuser' else Path(cmd[4]).name} failed "
            f"({r.returncode}): {r.stderr.strip()[-500:]}"
        )
    return r


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise SystemExit(
            "services: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install postgresql"
        )
    return found[-1].parent


def as_postgres() -> list[str]:
    """initdb and the server refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def start(home: Path, port: int) -> None:
    """PostgreSQL on HOME/pg (made at the first start, with a new password in HOME/pgpass), and its databases."""
    bindir, data, pgpass = pg_bin(), home / "pg", home / "pgpass"
    if not data.exists():
        _init_cluster(home, bindir, data, pgpass, port)
    opts = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
    run(
        [
            *as_postgres(),
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(home / "postgres.log"),
            "-w",
            "-o",
            opts,
            "start",
        ]
    )
    _create_databases(bindir, port, {**os.environ, "PGPASSFILE": str(pgpass)})


def _init_cluster(home: Path, bindir: Path, data: Path, pgpass: Path, port: int) -> None:
    """initdb with a generated password, which only pgpass (mode 0600) keeps."""
    password = secrets.token_urlsafe(24)
    pwfile = home / ".pw"
    private_file(pwfile, password + "\n")
    private_file(pgpass, f"127.0.0.1:{port}:*:{USER}:{password}\n")
    if as_postgres():
        shutil.chown(home, "postgres")
        shutil.chown(pwfile, "postgres")
    try:
        run(
            [
                *as_postgres(),
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "-A",
                "scram-sha-256",
                f"--pwfile={pwfile}",
            ]
        )
    finally:
        pwfile.unlink()


def _create_databases(bindir: Path, port: int, env: dict[str, str]) -> None:
    server = ["-h", "127.0.0.1", "-p", str(port), "-U", USER]
    for db in DATABASES:
        query = f"SELECT 1 FROM pg_database WHERE datname='{db}'"
        exists = run([str(bindir / "psql"), *server, "-d", "postgres", "-tAc", query], env=env).stdout.strip()
        if not exists:
            run([str(bindir / "createdb"), *server, db], env=env)
