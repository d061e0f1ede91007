"""Operations commands: serve, database upgrades, API keys, worker health, doctor.

Nothing here imports torch except the doctor's GPU check, so these run in the gateway image.
Each command imports the service or workers pieces it uses inside its function, so that one
command does not load what another needs.
"""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager


def cmd_serve(args) -> int:
    from service.serve import serve

    serve(host=args.host, port=args.port, workers=args.workers,
          embedded_worker=False if args.no_embedded_worker else None,
          worker_concurrency=args.concurrency, device=args.device)
    return 0


@contextmanager
def _reaching_database(url: str):
    """A database that cannot be reached (down, wrong host, role or password) is a deployment
    problem: one line naming it, not a traceback (the container's log is what an operator reads)."""
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as err:
        reason = str(err.orig or err).strip().splitlines()[0]
        raise ConnectionError(f"database {_redact(url)} not reachable: {reason}") from None


def cmd_db_upgrade(args) -> int:
    from service.db import ensure_schema
    from workers import get_settings, upgrade_database

    url = get_settings().database
    with _reaching_database(url):
        upgrade_database(url)
        ensure_schema(url)
    print(f"database schema up to date ({_redact(url)})")
    return 0


def cmd_keys(args) -> int:
    from service.keys import create_key, list_keys, revoke_key
    from workers import get_settings

    with _reaching_database(get_settings().database):
        return _keys(args, create_key, list_keys, revoke_key)


def _keys(args, create_key, list_keys, revoke_key) -> int:
    if args.keys_command == "create":
        token = create_key(args.lab)
        print(token)
        print(f"API key for lab '{args.lab}'; shown once, stored hashed. Send it as "
              f"'Authorization: Bearer <key>'.", file=sys.stderr)
    elif args.keys_command == "revoke":
        if not revoke_key(args.key_id):
            raise ValueError(f"key_id: no active key {args.key_id!r}")
        print(f"revoked {args.key_id}")
    else:
        for key in list_keys(args.lab, include_revoked=args.all):
            print("\t".join(str(v) for v in (key.id, key.lab, key.created_at,
                                               key.revoked_at or "active")))
    return 0


def cmd_worker_ping(args) -> int:
    """Exit 0 when a worker on this machine answers (container health check), else 1 with one
    line that says why: never a traceback, whatever is down."""
    from workers import embedded, get_settings, ping_local_workers

    from .errors import one_line

    try:
        if get_settings().embedded:  # cannot be pinged: the pid file `mcvae serve` keeps
            ok, detail = embedded.status()
            answered = [detail] if ok else []
            why = detail
        else:
            answered = ping_local_workers(timeout=args.timeout)
            why = "no worker on this machine answered"
    except Exception as err:  # noqa: BLE001 - a health check reports, it does not crash
        answered, why = [], f"cannot ask the workers: {one_line(err)}"
    if not answered:
        print(f"mcvae worker-ping: {why}", file=sys.stderr)
        return 1
    print(" ".join(answered))
    return 0


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def cmd_doctor(args) -> int:
    """Check settings, database, broker, workers, GPU and disk; say what is wrong and how to fix it."""
    problems: list[str] = []

    def report(ok: bool, what: str, fix: str = "") -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            problems.append(f"{what}: {fix}")

    try:
        from workers import get_settings, health

        settings = get_settings()
    except Exception as err:  # noqa: BLE001 - bad environment values: a FAIL line, not a crash
        from .errors import one_line

        report(False, f"settings: {one_line(err)}", "fix the MCVAE_* environment variables")
        return 1
    report(True, f"settings: broker {_redact(settings.broker)}, database {_redact(settings.database)}")
    status = health(timeout=args.timeout)
    report(bool(status.get("database")), "database reachable",
           "start PostgreSQL or fix MCVAE_DATABASE_URL; then run 'mcvae db upgrade'")
    report(bool(status.get("broker")), "broker reachable", "start Redis or fix MCVAE_BROKER_URL")
    if settings.embedded:  # as /readyz judges it: the worker `mcvae serve` started, if alive
        from workers import embedded

        alive, detail = embedded.status(settings)
    else:
        alive = bool(status.get("workers"))
        detail = f"{len(status['workers'])} answered" if alive else "none answered a ping"
    report(alive, f"at least one worker answers ({detail})",
           "start one with 'mcvae worker' (or 'mcvae serve' with no broker configured)")
    root = settings.data_dir.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free / 2**30
    report(free > 5, f"disk: {free:.1f} GiB free under {root}", "free space or move MCVAE_DATA_DIR")
    try:
        import torch

        gpu = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if gpu else "none"
        print(f"[ok] torch {torch.__version__}; CUDA GPU: {name}")
        if settings.device.startswith("cuda") and not gpu:
            report(False, f"MCVAE_DEVICE={settings.device} but no CUDA GPU is visible",
                   "install the NVIDIA container toolkit / driver, or set MCVAE_DEVICE=cpu")
    except ImportError:
        print("[ok] torch not installed (gateway-only install: training runs on workers)")
    if problems:
        print("\nto fix:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\nall checks passed")
    return 0


def add_ops_commands(sub) -> None:
    p = sub.add_parser("serve", help="start the REST gateway (plus embedded workers, one for training and one for "
                       "ingest, when no broker is set)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    p.add_argument("--no-embedded-worker", action="store_true", help="never start a worker beside the gateway")
    p.add_argument("--concurrency", type=int, default=1, help="processes of each embedded worker")
    p.add_argument("--device", default=None, help="embedded workers' device")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("db", help="database administration")
    db_sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply schema migrations (jobs and gateway tables)").set_defaults(
        func=cmd_db_upgrade)

    p = sub.add_parser("keys", help="API keys per lab (stored hashed)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys_sub.add_parser("create", help="make a key for a lab and print it once")
    k.add_argument("--lab", required=True, help="the lab the key belongs to")
    k.set_defaults(func=cmd_keys)
    k = keys_sub.add_parser("revoke", help="revoke a key by its id")
    k.add_argument("key_id", help="the key's id, as 'mcvae keys list' prints it")
    k.set_defaults(func=cmd_keys)
    k = keys_sub.add_parser("list", help="list keys (ids and labs, never secrets)")
    k.add_argument("--lab", default=None, help="only this lab's keys")
    k.add_argument("--all", action="store_true", help="include revoked keys")
    k.set_defaults(func=cmd_keys)

    p = sub.add_parser("worker-ping", help="exit 0 if a worker on this machine answers (health check)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    p.set_defaults(func=cmd_worker_ping)

    p = sub.add_parser("doctor", help="check settings, database, broker, workers, GPU and disk space")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait per check (default 2)")
    p.set_defaults(func=cmd_doctor)
