"""``genesis-dr metrics``: the stack's Prometheus metrics (printed, served, or written for node-exporter),
and optionally CloudWatch.

The metrics are read from the vault in this process (``core.observe``), like ``genesis-dr status``: no
flow run, no Prefect server. ``--listen`` serves ``/metrics`` until stopped, re-reading the vault at most
every ``--cache-seconds``; ``--textfile`` writes the exposition atomically for node-exporter's textfile
collector; ``--cloudwatch`` publishes to the stack's ``operations.cloudwatch`` namespace.
"""

from __future__ import annotations

import sys
import time

from cli.replicate import STACK_HELP
from core.errors import ConfigError

EPILOG = (
    "--listen ':9464' listens on every interface (as node-exporter does); give '127.0.0.1:9464' to keep it on "
    "this host. With --textfile or --cloudwatch, --every N repeats every N seconds until stopped (otherwise "
    "once, e.g. from a systemd timer). Metric names: core/observe/metrics.py and deployments/alerts.rules.yml."
)


def register(subparsers) -> None:
    """Add ``metrics`` to the ``genesis-dr`` parser."""
    p = subparsers.add_parser(
        "metrics",
        help="the stack's Prometheus metrics: print them, serve them (--listen) or write them (--textfile)",
        description="The stack's metrics (last backups, RPO, capture, replica lag, validations, drills, vault "
        "room, failures) in the Prometheus exposition format, read from its vault. Without --listen or "
        "--textfile they are printed once.",
        epilog=EPILOG,
    )
    p.add_argument("--stack", default="default", help=STACK_HELP)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", help="serve /metrics over HTTP, e.g. ':9464'")
    where.add_argument("--textfile", metavar="PATH", help="write the exposition to PATH (e.g. .../genesis_dr.prom)")
    p.add_argument(
        "--cloudwatch", action="store_true", help="also publish to CloudWatch (the stack's operations.cloudwatch)"
    )
    p.add_argument("--every", type=float, metavar="SECONDS", help="repeat --textfile/--cloudwatch this often")
    p.add_argument(
        "--cache-seconds",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="--listen: re-read the vault at most this often (default 5)",
    )
    p.set_defaults(func=cmd_metrics)


def _cloudwatch_session(cfg):
    """The CloudWatch settings and the boto3 Session of their AwsCredentials block (None: the default chain);
    needs a Prefect session. The block's endpoint is used when the settings name none."""
    if not cfg.credentials:
        return cfg, None
    from prefect.exceptions import ObjectNotFound
    from prefect_aws import AwsCredentials

    try:
        creds = AwsCredentials.load(cfg.credentials)
    except (ValueError, ObjectNotFound):
        raise ConfigError(
            f"operations.cloudwatch: no AwsCredentials block named {cfg.credentials!r}; create it (prefect block "
            "create aws-credentials) or drop credentials to use boto3's default chain"
        ) from None
    endpoint = getattr(getattr(creds, "aws_client_parameters", None), "endpoint_url", None)
    if not cfg.endpoint_url and endpoint:
        cfg = cfg.model_copy(update={"endpoint_url": endpoint})
    return cfg, creds.get_boto3_session()


def _stack(args):
    """The stack, its CloudWatch settings (with --cloudwatch) and their boto3 session (None: default chain).

    Without --cloudwatch, or when this host's description carries the settings and they name no
    credentials block, the local description is enough (no Prefect). Otherwise the blocks are read once,
    in one Prefect session, and the whole stack they hold is used (its schedules give the intervals too).
    """
    from cli.stacks import description, from_blocks, prefect_session
    from core import stack_description

    local = stack_description.load(args.stack) if args.cloudwatch else None
    operations = getattr(local, "operations", None)
    if not args.cloudwatch:
        return description(args.stack), None, None
    if operations is not None and (operations.cloudwatch is None or not operations.cloudwatch.credentials):
        if operations.cloudwatch is None:
            raise _no_cloudwatch(args.stack)
        return description(args.stack), operations.cloudwatch, None
    with prefect_session():
        config = from_blocks(args.stack)
        if config.operations.cloudwatch is None:
            raise _no_cloudwatch(args.stack)
        cfg, session = _cloudwatch_session(config.operations.cloudwatch)
    return config, cfg, session


def _no_cloudwatch(stack: str) -> ConfigError:
    return ConfigError(
        f"stack '{stack}' has no operations.cloudwatch; add one (namespace, region) to the stack file and apply "
        "it, or leave out --cloudwatch"
    )


def cmd_metrics(args) -> int:
    from cli.stacks import note
    from core import cancel
    from core.observe.cloudwatch import publish_cloudwatch
    from core.observe.metrics import CachedSnapshot, parse_listen, registry_for, serve, write_textfile
    from core.observe.snapshot import build_snapshot

    if args.every is not None and args.every <= 0:
        raise ConfigError(f"--every {args.every:g}: give a number of seconds above 0")
    listen = None
    if args.listen:
        try:
            listen = parse_listen(args.listen)
        except ValueError as exc:
            raise ConfigError(f"--listen: {exc}") from None
    config, cw, session = _stack(args)
    provider = CachedSnapshot(
        lambda: build_snapshot(config), ttl=args.cache_seconds if listen else 1.0, warn=lambda m: note(f"metrics: {m}")
    )
    registry = registry_for(provider)

    def once() -> None:
        if args.textfile:
            write_textfile(args.textfile, registry)
        if cw is not None:
            sent = publish_cloudwatch(provider(), cw, session)
            print(f"published {sent} data to CloudWatch namespace {cw.namespace}", file=sys.stderr)

    if listen is None:
        if not args.textfile and cw is None:
            from prometheus_client import generate_latest

            sys.stdout.write(generate_latest(registry).decode())
            return 0
        once()
        while args.every and not _wait(args.every, cancel):
            once()
        cancel.reset()
        return 0
    server, _thread = serve(registry, *listen)
    host, port = listen
    print(f"serving the metrics of stack '{args.stack}' on http://{host}:{port}/metrics (Ctrl-C stops)", flush=True)
    try:
        next_publish = 0.0
        while not cancel.requested():
            if cw is not None and time.monotonic() >= next_publish:
                once()
                next_publish = time.monotonic() + (args.every or 60.0)
            _wait(0.5, cancel)
    finally:
        server.shutdown()
        server.server_close()
    cancel.reset()  # a signal is how serving ends: nothing was interrupted
    print("stopped serving the metrics")
    return 0


def _wait(seconds: float, cancel) -> bool:
    """Sleep ``seconds`` unless a stop is requested meanwhile; True if one was."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancel.requested():
            return True
        time.sleep(min(0.2, deadline - time.monotonic()))
    return cancel.requested()
