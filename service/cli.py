"""The `redline` command: serve (everything, `supervisor`), api, worker, monitor, keys, versions, evaluate,
export."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError
from .settings import Settings, unknown_variables
from .supervisor import ROOT, build_shipped_graphs, require_data_dir, require_free_port, serve

GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
log = logging.getLogger("redline")


def _through_the_api(command: argparse.ArgumentParser, scopes: str) -> None:
    """The options of a command that works through a running API (`api_client`)."""
    command.add_argument("--url", default="http://127.0.0.1:8080", help="the API (default http://127.0.0.1:8080)")
    command.add_argument("--key-file", help=f"file holding an API key with {scopes} (not on the command line, "
                                            "so it stays out of shell history and process listings)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="redline", description="Score and monitor LLM outputs.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start Redis (unless REDLINE_REDIS_URL is set), the API and the workers")
    sub.add_parser("api", help="start the API under gunicorn (needs REDLINE_REDIS_URL)")
    sub.add_parser("monitor", help="keep the quality gauges and the listing fresh in a process of its own, so API "
                                   "processes never compute them (needs REDLINE_REDIS_URL; optional)")
    worker = sub.add_parser("worker", help="start one scoring worker (needs REDLINE_REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key: printed once, its hash appended to the keys file")
    create.add_argument("--tenant", required=True, help="tenant the key acts for (lowercase letters, digits, -)")
    create.add_argument("--scopes", default="outputs:write,labels:write,read",
                        help="comma-separated: outputs:write, labels:write, read (default: all)")
    create.add_argument("--note", default="", help="who or what the key is for, kept in the file beside it")
    create.add_argument("--file", type=Path, help="keys file (default: REDLINE_API_KEYS_FILE)")
    listing = keys.add_parser("list", help="the keys in force: tenant, scopes, and each key's comment")
    listing.add_argument("--file", type=Path, help="keys file (default: REDLINE_API_KEYS_FILE)")
    revoke = keys.add_parser("revoke", help="remove a key's line; running APIs stop accepting it within a second")
    revoke.add_argument("key", help="the key (rl_...), or - to read it from stdin (keeps it out of shell history)")
    revoke.add_argument("--file", type=Path, help="keys file (default: REDLINE_API_KEYS_FILE)")
    evaluate = sub.add_parser("evaluate", help="AUC, N-AUC, (N,M)-AUC and FNR of a file of scores and labels")
    evaluate.add_argument("file", help="CSV with 'score' and 'label' columns, or JSON Lines with those keys")
    evaluate.add_argument("--n", type=int, action="append", help="N of the N-AUC (repeatable; default 1, 5, 20)")
    evaluate.add_argument("--m", type=int, action="append", help="M of the (N,M)-AUC (repeatable; default 1)")
    evaluate.add_argument("--threshold", type=float, help="report FNR and FPR at this threshold")
    evaluate.add_argument("--target-fnr", type=float, help="report the highest threshold meeting this FNR")
    evaluate.add_argument("--format", choices=("json", "text"), default="json")
    evaluate.add_argument("--plot", metavar="OUT.png", help="ROC curve with the high-sensitivity region shaded")
    export = sub.add_parser("export", help="the labeled outputs of a model and detector, as JSON Lines, from a "
                                           "running API (GET /v1/labels, every page)")
    export.add_argument("--model", required=True, help="the deployed model")
    export.add_argument("--detector", required=True)
    _through_the_api(export, "the read scope")
    export.add_argument("--window", help="only outputs of the last 24h, 7d, ... (default: everything kept)")
    export.add_argument("--version", help="another detector version than the one served")
    export.add_argument("--limit", type=int, default=100, help="outputs per request (default 100)")
    export.add_argument("--out", "-o", help="file to write (default: standard output)")
    submits = sub.add_parser("submit", help="outputs from a JSON Lines file, through a running API (POST "
                                            "/v1/outputs, a chunk at a time, waiting out backpressure)")
    submits.add_argument("file", help="one POST /v1/outputs item a line; give each an id, so a re-run sends "
                                      "nothing twice")
    _through_the_api(submits, "the outputs:write scope")
    submits.add_argument("--chunk", type=int, default=100, help="outputs per request (default 100; at most "
                                                                "REDLINE_MAX_OUTPUTS_PER_REQUEST)")
    imports = sub.add_parser("import", help="reviewers' labels from a JSON Lines file, through a running API "
                                            "(POST /v1/labels, a chunk at a time)")
    imports.add_argument("file", help='one {"id", "detector", "label"} a line (redline export\'s lines too)')
    imports.add_argument("--detector", help="the detector of lines that name none")
    _through_the_api(imports, "the labels:write scope")
    imports.add_argument("--chunk", type=int, default=500, help="labels per request (default 500; at most "
                                                                "REDLINE_MAX_LABELS_PER_REQUEST)")
    retry = sub.add_parser("retry", help="queue failed outputs for scoring again, once their cause is fixed, "
                                         "through a running API (GET /v1/dead-letters, then POST .../retry)")
    retry.add_argument("--error", help="only dead letters whose error contains this text, e.g. 'detectors "
                                       "not loaded' after a rollout (default: every one)")
    retry.add_argument("--model", help="only outputs of this deployed model")
    _through_the_api(retry, "the read and outputs:write scopes")
    retry.add_argument("--chunk", type=int, default=100, help="outputs per retry request (default 100)")
    retry.add_argument("--dry-run", action="store_true", help="print the ids that match, retry none")
    versions = sub.add_parser("versions", help="the detector version claims workers hold, and releasing one "
                                               "(needs REDLINE_REDIS_URL, or a running `redline serve`)")
    versions_sub = versions.add_subparsers(dest="versions_command")
    versions_sub.add_parser("list", help="each claimed version: fingerprint, when it lapses, live workers, "
                                         "and whether this host's files match it (the default)")
    release = versions_sub.add_parser("release", help="delete a version's claim, so workers with other files "
                                                      "may serve it (its windows then mix both models' scores)")
    release.add_argument("detector")
    release.add_argument("version")
    args = parser.parse_args(argv)
    if args.command == "submit":
        from . import outputs_client

        return outputs_client.main(args)
    if args.command == "import":
        from . import labels_import

        return labels_import.main(args)
    if args.command == "retry":
        from . import retry_client

        return retry_client.main(args)
    if args.command == "export":
        from . import labels_client

        return labels_client.main(args)
    if args.command == "evaluate":
        from . import offline
        from .evaluation import check_order

        bad = [v for v in (args.n or []) + (args.m or []) if v < 1]
        if bad or (args.target_fnr is not None and not 0 <= args.target_fnr < 1):
            parser.error("--n and --m must be >= 1 and --target-fnr in [0, 1)")
        for n in args.n or offline.DEFAULT_NS:
            for m in args.m or offline.DEFAULT_MS:
                try:
                    check_order(n, m)
                except ValueError as exc:
                    parser.error(str(exc))
        return offline.main(args)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"redline: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    for name in unknown_variables():
        log.warning("ignoring unknown setting %s (typo?)", name)
    try:
        if args.command == "keys":
            return keys_command(settings, args)
        if args.command == "versions":
            from . import versions_cli

            return versions_cli.main(settings, args)
        if args.command == "serve":
            return serve(settings)
        if args.command == "api":
            return run_api(settings)
        if args.command == "monitor":
            return run_monitor(settings)
        return run_worker(settings, burst=args.burst)
    except ConfigError as exc:
        print(f"redline: {exc.message}", file=sys.stderr)
        return 2


def configure_logging(level: str) -> None:
    """One log format for every Redline process: the CLI's, workers', and the API's gunicorn processes
    (deploy/gunicorn.conf.py), whose app loggers otherwise had no handler: Python's last resort printed
    bare WARNING messages, with no time, level or source, and dropped REDLINE_LOG_LEVEL=INFO."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s%(request)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_name_the_request)


def _name_the_request(record: logging.LogRecord) -> bool:
    """Adds ` [request <id>]` to a line logged while the API serves a request (the id its client got in
    X-Request-ID), and nothing elsewhere. Flask is looked up, not imported: a worker never loads it."""
    record.request = ""
    flask = sys.modules.get("flask")
    if flask is not None and flask.has_request_context() and "request_id" in flask.g:
        record.request = f" [request {flask.g.request_id}]"
    return True


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    """`redline keys create|list|revoke`."""
    from .auth import create_key, describe_keys, revoke_key

    path = args.file or (Path(settings.api_keys_file) if settings.api_keys_file else None)
    if path is None:
        raise ConfigError("give --file or set REDLINE_API_KEYS_FILE")
    if args.keys_command == "list":
        print("\n".join(describe_keys(path)))
        return 0
    if args.keys_command == "revoke":
        key = sys.stdin.readline() if args.key == "-" else args.key
        removed = revoke_key(path, key)
        print(f"revoked: {removed} line(s) removed from {path}; running APIs reload it within a second",
              file=sys.stderr)
        return 0
    key = create_key(path, args.tenant, [s.strip() for s in args.scopes.split(",") if s.strip()], args.note)
    print(key)
    print(f"(shown once; its SHA-256 was appended to {path} for tenant {args.tenant!r})", file=sys.stderr)
    return 0


def run_api(settings: Settings) -> int:
    """Replace this process with gunicorn serving `service.app:create_app()`."""
    if not settings.redis_url:
        raise ConfigError("REDLINE_REDIS_URL is not set")
    from .app import open_or_keys

    open_or_keys(settings)  # fail here, before gunicorn, on a bad keys file or an open public address
    require_free_port(settings)
    require_data_dir(settings)
    build_shipped_graphs(settings)
    # Request metrics of all gunicorn processes are merged through this directory (wiped at start).
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.data_dir / f"prometheus-api-{settings.port}"))
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "service.app:create_app()"])
    return 0  # not reached


def run_worker(settings: Settings, burst: bool = False) -> int:
    if not settings.redis_url:
        raise ConfigError("REDLINE_REDIS_URL is not set")
    from redis import Redis

    from workers.redis_loss import wait_for_redis
    from workers.worker import build_worker

    from .keys import Keys

    build_shipped_graphs(settings)
    from .redis_config import risks

    redis = Redis.from_url(settings.redis_url)
    wait_for_redis(redis, probe=Keys(settings.queue_prefix).write_probe)  # RQ's Worker writes as it is built
    for risk in risks(redis):
        log.warning("%s", risk)
    worker = build_worker(redis, settings)
    worker.work(burst=burst, logging_level=settings.log_level)
    return 0


def run_monitor(settings: Settings) -> int:
    """Refresh the quality snapshot until SIGTERM or Ctrl-C. At a few models a refresh takes milliseconds
    and the API processes do it themselves; at hundreds it takes minutes of CPU, which this keeps off
    the processes serving requests. Safe to run alongside them (a Redis lock) and to stop at any time."""
    import threading

    from redis import Redis

    from .core import Redline

    if not settings.redis_url:
        raise ConfigError("REDLINE_REDIS_URL is not set")
    core = Redline(settings, Redis.from_url(settings.redis_url))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    log.info("keeping the quality gauges fresh: refreshed once they are %g s old", settings.metrics_refresh_s / 2)
    core.quality.keep_fresh(stop)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

