"""``genesis-dr classify``: propose data classes for the stack's sources from a bounded sample.

Runs in this process (no flow: it reads the sources and writes nothing). The
sources come from the stack's local description; a source that needs a password
the description does not hold is read from the stack's blocks (only then is
Prefect involved). The report names places and counts, never a sampled value.
"""

from __future__ import annotations

import argparse
import json

from cli.replicate import STACK_HELP


def _rows(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number from 1 to 100000")
    return int(text)


def register(subparsers) -> None:
    """Add ``classify`` to the ``genesis-dr`` parser."""
    p = subparsers.add_parser(
        "classify",
        help="scan sources and propose their data classes (personal, cardholder, health, financial)",
        description="Scan the stack's sources and propose the data classes retention should follow: column, key, "
        "field and file names, and a bounded sample of values checked for e-mail addresses, card numbers (Luhn), "
        "national identifiers (US SSN, UK NINO), ICD-10 health codes, phone numbers and IBANs. PostgreSQL, "
        "MariaDB/MySQL, Redis and files sources are scanned; bucket sources are listed, not scanned. Nothing is "
        "written and no sampled value is printed or kept: confirm a proposal by adding the classes to the "
        "source's data_classes in the stack file.",
        epilog="exit 0: the scan ran (whatever it proposes); 2: bad arguments or an unknown source; 7: a source "
        "could not be reached; 13: the source refused a query.",
    )
    p.add_argument("--source", action="append", metavar="NAME", help="only this source (repeatable)")
    p.add_argument("--stack", default="default", help=STACK_HELP)
    p.add_argument(
        "--sample-rows",
        type=_rows,
        default=200,
        metavar="N",
        help="rows sampled per table (PostgreSQL, MariaDB/MySQL; default 200); Redis keys and files have their own "
        "caps (GENESIS_DR_CLASSIFY_MAX_KEYS, GENESIS_DR_CLASSIFY_MAX_FILES)",
    )
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=cmd_classify)


def _stack(name: str, sources: list[str] | None):
    """The stack's description, or its blocks when a chosen source needs a secret the description lacks."""
    from cli.stacks import description, from_blocks, prefect_session

    local = description(name)
    chosen = sources or [s.name for s in local.sources]
    if any(local.needs_secret(n) for n in chosen if n in {s.name for s in local.sources}):
        with prefect_session():
            return from_blocks(name)
    return local


def cmd_classify(args) -> int:
    from core.retention.classify import classify_stack

    config = _stack(args.stack, args.source)
    reports = classify_stack(config, args.source, sample_rows=args.sample_rows)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2, sort_keys=True))
    else:
        print("\n\n".join(r.text() for r in reports))
    return 0
