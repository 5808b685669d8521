"""Input that cannot hang or crash the tool: the stack loader, operator times, the command line.

Each finding of issue 6 ("Input that cannot hang or crash the tool") has a pinned test; then
Hypothesis throws generated input at the stack loader and at the argument parsing and checks
the contract: never a traceback (only ConfigError/DRError, or argparse's SystemExit), never
more than a bounded time and memory, always a documented exit code (README, "Exit codes").

Nothing here starts a Prefect server: the command is run in-process only on paths that fail
before any flow runs; the rest of the argument checks are the core validators it calls.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.crypto.keys import generate_x25519_keypair
from core.errors import EXIT_CODES, ConfigError, DRError
from core.plan import restore_target
from core.stack import MAX_STACK_FILE_BYTES, StackConfig, load_stack_file
from core.times import parse_operator_time

PUBLIC_KEY = generate_x25519_keypair()[1]
ENV = {"PASS": "pw-for-tests-only", "DB_PORT": "5432", "EMPTY": ""}
DOCUMENTED_EXIT_CODES = {0, 130, *EXIT_CODES.values()}  # 2 is also argparse's usage error
TIME_LIMIT_S = 1.0
MEMORY_LIMIT = 32 << 20  # the 9-level bomb took 2.7 GB before the fix

FUZZ = settings(
    max_examples=int(os.environ.get("GENESIS_DR_FUZZ_EXAMPLES", "200")),  # raise it to search longer
    deadline=timedelta(seconds=10),  # a backstop for the whole example; each call is held to TIME_LIMIT_S
    database=None,  # nothing written into the checkout
    derandomize=os.environ.get("CI") == "true",  # CI runs the same examples every time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def good_stack() -> dict:
    return {
        "stack": "prod",
        "vault": {"path": "./vault"},
        "encryption": {"x25519_public_keys": [PUBLIC_KEY]},
        "sources": [
            {"name": "app-db", "kind": "postgres", "host": "127.0.0.1", "port": 5432, "database": "app"},
            {"name": "app-mysql", "kind": "mysql", "port": "${DB_PORT}", "database": "app"},
            {"name": "cache", "kind": "redis", "port": 6379, "mode": "logical", "db": 0},
            {"name": "files", "kind": "files", "root": "./app", "paths": ["."]},
        ],
    }


def dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def bounded(fn, *args):
    """Call ``fn``; assert it took < TIME_LIMIT_S and < MEMORY_LIMIT; return (result, exception).

    A call over the time limit is timed once more: a real hang repeats, a busy CI machine does not.
    """
    for _attempt in (1, 2):
        tracemalloc.start()
        start = time.perf_counter()
        result = error = None
        try:
            result = fn(*args)
        except Exception as exc:  # judged by the caller: only the expected kinds pass
            error = exc
        finally:
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"peak {peak >> 20} MiB"
        if elapsed < TIME_LIMIT_S:
            break
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s, twice"
    return result, error


def load_bytes(workdir: Path, content: bytes | str):
    """Load ``content`` as a stack file under the contract; return the stack or the ConfigError."""
    path = workdir / "dr.yaml"
    path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    stack, error = bounded(load_stack_file, path, ENV)
    if error is not None:
        if not isinstance(error, ConfigError):
            raise error  # a traceback and exit 1 for the operator
        message = str(error)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert len(message) < 1000, message
        assert str(path) in message, message  # names the file
        return error
    assert isinstance(stack, StackConfig)
    for src in stack.sources:  # what validation promises the engines
        if hasattr(src, "port"):
            assert type(src.port) is int and 1 <= src.port <= 65535
        if src.kind == "files":
            assert src.paths and not any(p.startswith("/") or ".." in p.split("/") for p in src.paths)
    return stack


def refused(workdir: Path, content: bytes | str) -> str:
    outcome = load_bytes(workdir, content)
    assert isinstance(outcome, ConfigError), "accepted"
    return str(outcome)


# -- the findings, one by one -------------------------------------------------------------------


def bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    good = dump(good_stack())
    assert "paths: [.]" in good
    good = good.replace("paths: [.]", f"paths: *a{levels - 1}")
    return "\n".join(lines) + "\n" + good


def test_alias_bomb_is_refused_at_once(workdir):
    start = time.perf_counter()
    err = refused(workdir, bomb(9))
    assert time.perf_counter() - start < 0.5
    assert "line 1: YAML anchors and aliases (&a0) are not allowed in a stack file; write the value out" in err


def test_a_lone_anchor_or_alias_is_refused_too(workdir):
    assert "(&x)" in refused(workdir, "stack: &x prod\n" + dump(good_stack()).split("\n", 1)[1])
    assert "(*nope)" in refused(workdir, dump(good_stack()).replace("stack: prod", "stack: *nope"))


def test_duplicate_keys_name_the_path_and_lines(workdir):
    text = dump(good_stack())
    assert "line 2: duplicate key 'stack' (first at line 1); keep only one" in refused(workdir, "stack: a\n" + text)
    nested = text.replace("port: 5432,", "port: 5432, port: 6432,")
    assert "duplicate key 'sources[0].port' (first at line " in refused(workdir, nested)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text (byte 0x89 at line 1)"),
        ("stack: caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 1)"),
        ("\ufeffstack: x".encode("utf-16"), "not UTF-8 text (byte 0xff at line 1)"),
        (b"stack: prod\nvault: {path: \x00}\n", "line 2: control character U+0000 is not allowed in YAML"),
        (b'stack: "a\\0b"\n', "stack: contains a NUL character"),
        (b'stack: "\\ud800"\n', "stack: contains an unpaired surrogate"),
        (b"port: " + b"9" * 5000, "not valid YAML at line 1 (cannot read the number '9999"),
        (b"port: 0x_", "cannot read the number '0x_'"),
        (b"a: " + b"[" * 5000 + b"]" * 5000, "line 1: nested deeper than 32 levels"),
        (b"- " * 5000 + b"x", "nested deeper than 32 levels"),
    ],
)
def test_binary_odd_and_deep_files_are_one_line_errors(workdir, content, expected):
    assert expected in refused(workdir, content)


def test_a_timestamp_stays_text(workdir):
    data = good_stack()
    data["sources"][0]["database"] = "2001-13-45"  # was a ValueError (month 13) inside the YAML loader
    text = dump(data).replace("'2001-13-45'", "2001-13-45")
    assert load_bytes(workdir, text).source("app-db").database == "2001-13-45"


def test_huge_file_is_refused_without_reading_it(workdir):
    path = workdir / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(50 * MAX_STACK_FILE_BYTES)  # sparse: 50 MiB of NULs
    _, error = bounded(load_stack_file, path, ENV)
    assert isinstance(error, ConfigError)
    assert "larger than 1 MiB; a stack file is a few KB of YAML" in str(error)


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("port", [99999, 65536, 0, -1, True, 5432.5, "five", "-1", [5432], None])
def test_ports_are_whole_numbers_in_range(workdir, index, port):
    data = good_stack()
    data["sources"][index]["port"] = port
    name = data["sources"][index]["name"]
    err = refused(workdir, dump(data))
    assert f"field 'sources[{index}] ({name}).port': must be a whole number from 1 to 65535, not " in err


@pytest.mark.parametrize("port", [1, 65535, "6380", "${DB_PORT}"])
def test_ports_in_range_and_from_the_environment_are_accepted(workdir, port):
    data = good_stack()
    data["sources"][0]["port"] = port
    assert load_bytes(workdir, dump(data)).source("app-db").port in (1, 65535, 6380, 5432)


@pytest.mark.parametrize("db", [-1, True, "x", 2**31])
def test_redis_db_is_a_database_index(workdir, db):
    data = good_stack()
    data["sources"][2]["db"] = db
    assert "field 'sources[2] (cache).db': must be a whole number from 0 to 2147483647" in refused(workdir, dump(data))


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["../../../etc"], "field 'sources[3] (files).paths[0]': path '../../../etc' leaves root; remove the '..'"),
        (["ok", "/etc"], "field 'sources[3] (files).paths[1]': path '/etc' is absolute; list paths relative to root"),
        (["a/../../b"], "field 'sources[3] (files).paths[0]': path 'a/../../b' leaves root"),
        ([], "field 'sources[3] (files).paths': list at least one path below root"),
    ],
)
def test_files_paths_stay_below_root_at_apply(workdir, paths, expected):
    data = good_stack()
    data["sources"][3]["paths"] = paths
    assert expected in refused(workdir, dump(data))


def test_stack_level_complaints_name_their_field(workdir):
    data = good_stack()
    data["sources"][3]["name"] = "app-db"
    assert (
        "field 'sources[3] (app-db).name': source name 'app-db' is used twice (also by sources[0]); rename one"
        in refused(workdir, dump(data))
    )
    data = good_stack()
    data["sources"][1]["name"] = "App DB"
    assert "field 'sources[1] (App DB).name': source name 'App DB' must be" in refused(workdir, dump(data))
    data = good_stack()
    data["stack"] = "prod\n"  # `$` let a trailing newline through into block names
    assert "field 'stack': stack name 'prod\\n' must be" in refused(workdir, dump(data))


NOW = datetime(2026, 12, 2, 13, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T14:30:00Z", datetime(2026, 12, 1, 14, 30, tzinfo=UTC)),
        ("2026-12-01T14:30:00z", datetime(2026, 12, 1, 14, 30, tzinfo=UTC)),
        ("2026-12-01 14:30", datetime(2026, 12, 1, 14, 30, tzinfo=UTC)),  # no zone: UTC
        ("2026-12-01T15:30:00+01:00", datetime(2026, 12, 1, 14, 30, tzinfo=UTC)),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        (" now ", NOW),
        ("2h ago", NOW - timedelta(hours=2)),
        ("-2h", NOW - timedelta(hours=2)),
        ("- 90m", NOW - timedelta(minutes=90)),
        ("2 hours ago", NOW - timedelta(hours=2)),
        ("3 days ago", NOW - timedelta(days=3)),
        ("1W AGO", NOW - timedelta(weeks=1)),
    ],
)
def test_operator_times(text, expected):
    when = parse_operator_time(text, now=NOW)
    assert when == expected and when.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    ["yesterday", "", "2h", "in 2h", "-5 fortnights", "2026-13-01", "0001-01-01T00:00:00+01:00", "-999999999w"],
)
def test_bad_operator_times_name_the_option(text):
    with pytest.raises(ConfigError) as err:
        parse_operator_time(text, now=NOW)
    message = str(err.value)
    assert message.startswith(f"--target-time {text!r}: ")
    assert "e.g. 2026-12-01T14:30:00Z, '2026-12-01 14:30' (no zone means UTC), '2h ago' or -90m" in message


@pytest.fixture(scope="module")
def cli():
    """cli.main imported (it sets Prefect's environment defaults; put back after) and warmed up once."""
    saved = dict(os.environ)
    try:
        from cli import main as cli_main

        with contextlib.redirect_stderr(io.StringIO()):
            cli_main.main(["restore", "--source", "x", "--target-time", "yesterday"])  # imports what restore needs
        yield cli_main
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_main(cli, argv: list[str]) -> tuple[int, str]:
    """``genesis-dr ARGV`` in-process (only for paths that fail before any flow runs): (exit code, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    def call():
        try:
            return cli.main(argv)
        except SystemExit as exc:
            return exc.code

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code, error = bounded(call)
    if error is not None:
        raise error
    assert code in DOCUMENTED_EXIT_CODES, code
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return code, err.getvalue()


def test_target_time_yesterday_is_a_usage_error(cli):
    code, err = run_main(cli, ["restore", "--source", "app-db", "--target-time", "yesterday"])
    assert code == 2
    assert err.startswith("genesis-dr: error: --target-time 'yesterday': not a time; use ISO 8601")
    assert err.count("\n") == 1


def test_apply_of_a_bomb_exits_2_at_once(cli, workdir):
    path = workdir / "bomb.yaml"
    path.write_text(bomb(12))
    code, err = run_main(cli, ["apply", str(path)])
    assert (code, err.count("\n")) == (2, 1)
    assert "anchors and aliases" in err


# -- generated input ----------------------------------------------------------------------------

# fmt: off
FIELDS = [
    "stack", "vault", "encryption", "sources", "name", "kind", "host", "port", "db", "mode", "database", "root",
    "paths", "path", "include", "exclude", "compression", "type", "passphrase", "passphrase_from",
    "x25519_public_keys", "x25519_private_key", "skip_unarchivable", "<<", "",
]
# fmt: on
# fmt: off
ODD_STRINGS = [
    "${PASS}", "${UNSET}", "${UNSET:-7}", "${DB_PORT}", "${EMPTY}", "${", "../../../etc", "/etc", "a/../../b", "", ".",
    "65536", "0", "-1", "99999", "true", "5432.0", " 5432 ", "0x1F90", "\x00", "\ud800", "\udcff", "2026-13-45",
    "1" * 5000, "é", "\u202e", "\ufeff", "x" * 3000, "postgres", "files", "redis", "mysql", "app-db", "\n", "'",
]
# fmt: on
# fmt: off
SNIPPETS = [
    "&a", "*a", "<<: *a", "port: " + "9" * 5000, "port: 0b_", "port: 0_", "t: 2001-13-45", "x: !!binary ZZZ",
    "x: !!python/object/apply:os.system [true]", "? [a, b]\n: c", "\t", "---", "...", "%YAML 1.1", "{", "[", "'",
    '"', "\\", "${", "port: 99999", "port: -1", "port: true", "paths: ['../../../etc']", "- ", ": ", "x: !!set {a, b}",
    "x: !!omap [a: 1]", 'x: "\\ud800"', 'x: "\\0"', "#", "x: !!timestamp 2001-02-30", "x: 1:2:3:4", "x: .inf",
    "x: !!float nan", "\x85", "\u2028", "stack: a\nstack: b", "x: " + "[" * 200, "x: |\n  a\n b",
]
# fmt: on

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_stacks(draw) -> str:
    """A valid stack with a few fields set, added or removed, dumped in some YAML style."""
    data = good_stack()
    for _ in range(draw(st.integers(1, 4))):
        node = data
        while True:  # walk down to some container
            children = [v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, dict | list)]
            if not children or draw(st.booleans()):
                break
            node = draw(st.sampled_from(children))
        if isinstance(node, dict):
            key = draw(st.sampled_from(FIELDS) | st.sampled_from(list(node) or ["x"]))
            if node and draw(st.integers(0, 4)) == 0:
                node.pop(key, None)
            else:
                node[key] = draw(values)
        elif node and draw(st.booleans()):
            node[draw(st.integers(0, len(node) - 1))] = draw(values)
        else:
            node.append(draw(values))
    return yaml.safe_dump(
        data,
        sort_keys=False,
        allow_unicode=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([None, True, False])),
    )


@st.composite
def mangled_texts(draw) -> str:
    """A dumped stack with raw YAML snippets spliced in, lines repeated, or the end cut off."""
    lines = draw(mutated_stacks()).split("\n")
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines)))
        how = draw(st.sampled_from(["insert", "append", "repeat", "cut"]))
        snippet = draw(st.sampled_from(SNIPPETS) | st.text(max_size=20))
        if how == "insert":
            lines.insert(at, snippet)
        elif how == "append" and at < len(lines):
            lines[at] += " " + snippet
        elif how == "repeat" and at < len(lines):
            lines.insert(at, lines[at])
        else:
            lines = lines[:at]
    return "\n".join(lines)


alias_bombs = st.builds(bomb, st.integers(1, 14), st.integers(2, 12))
deep_nesting = st.builds(
    lambda n, style: {"flow": "a: " + "[" * n + "]" * n, "map": "{a: " * n + "}" * n, "block": "- " * n + "x"}[style],
    st.integers(1, 20000),
    st.sampled_from(["flow", "map", "block"]),
)
stack_inputs = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=2000),
    mutated_stacks(),
    mangled_texts(),
    alias_bombs,
    deep_nesting,
)


@FUZZ
@given(content=stack_inputs)
def test_stack_loader_never_crashes_hangs_or_balloons(workdir, content):
    load_bytes(workdir, content)


# fmt: off
ARG_WORDS = [
    "apply", "backup", "list", "unlock", "repair-vault", "restore", "key", "generate", "rotate", "full",
    "differential", "incremental", "--stack", "--source", "--json", "--all", "--lock", "--new-identity",
    "--backup-id", "--target-time", "--target", "--target-source", "--mode", "--dry-run", "--force", "--help", "-h",
    "--version", "-", "--", "=", "app-db", "files", "port=99999", "port=\u00b2", "port=" + "9" * 5000, "port=6380",
    "db=-1", "password=x", "root=/tmp/x", "paths=../..", "yesterday", "2h ago", "-2h", "2026-12-01T14:30:00Z",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "--target-time=", "--stack=\x00",
]
# fmt: on
argvs = st.one_of(
    st.lists(st.sampled_from(ARG_WORDS) | st.text(max_size=20), max_size=8),
    st.builds(
        lambda source, when, targets: ["restore", "--source", source, "--target-time", when, *targets],
        st.sampled_from(["app-db", "cache", "files", "nope"]) | st.text(max_size=10),
        st.sampled_from(ARG_WORDS) | st.text(max_size=30),
        st.lists(
            st.sampled_from(["--target", "--target-source", "--dry-run"]) | st.sampled_from(ARG_WORDS), max_size=4
        ),
    ),
)


@pytest.fixture(scope="module")
def good_config(tmp_path_factory) -> StackConfig:
    path = tmp_path_factory.mktemp("stack") / "dr.yaml"
    path.write_text(dump(good_stack()))
    return load_stack_file(path, ENV)


@FUZZ
@given(argv=argvs)
def test_command_line_never_crashes_hangs_or_balloons(cli, good_config, argv):
    out, err = io.StringIO(), io.StringIO()

    def parse():
        try:
            return cli.build_parser().parse_args(argv)
        except SystemExit as exc:
            return exc

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        args, error = bounded(parse)
    if error is not None:
        raise error
    if isinstance(args, SystemExit):
        assert args.code in (0, 2), args.code  # --help, or a usage error
        assert "Traceback" not in err.getvalue()
        return
    if args.command != "restore":
        return  # the other commands validate nothing before their flow (or Prefect) runs
    # What cmd_restore checks before any flow run exists, through the same core functions.
    time_error = bounded(parse_operator_time, args.target_time)[1] if args.target_time is not None else None
    targets, target_error = bounded(cli._targets, args.target)
    for error in (time_error, target_error):
        if error is not None and not isinstance(error, DRError):
            raise error
        assert error is None or (isinstance(error, ConfigError) and "\n" not in str(error)), error
    if time_error is None and target_error is None:
        _, late = bounded(restore_target, good_config, args.source, targets, args.target_source)
        if late is not None and not isinstance(late, ConfigError):
            raise late
    if time_error is None:
        return  # main() would go on to load the stack from Prefect: not here
    code, stderr = run_main(cli, argv)  # refused before any flow run: safe to run the real command
    assert code == 2
    assert stderr.startswith("genesis-dr: error: --target-time ") and stderr.count("\n") == 1, stderr
