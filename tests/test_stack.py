"""The stack file: env interpolation and one-line errors that name the field."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.stack import load_stack_file

GOOD = """
stack: prod
vault: {path: ./vault}
encryption: {passphrase_from: "env:${PASS_VAR:-BACKUP_ENCRYPTION_PASSWORD}"}
sources:
  - {name: app-db, kind: postgres, host: "${DB_HOST:-127.0.0.1}", port: "${DB_PORT:-5432}", database: app}
  - {name: files, kind: files, root: ./app}
"""


def load(tmp_path, text, env=None):
    path = tmp_path / "dr.yaml"
    path.write_text(text)
    return load_stack_file(path, env={"PASS_VAR": "APP_PASSPHRASE"} | (env or {}))


def test_good_stack_with_env_and_relative_paths(tmp_path):
    stack = load(tmp_path, GOOD + "# ${NOT_SET} in a comment is ignored\n", {"DB_HOST": "db.internal"})
    db = stack.source("app-db")
    assert (db.host, db.port) == ("db.internal", 5432)
    assert stack.vault.path == str(tmp_path / "vault")
    assert stack.source("files").root == str(tmp_path / "app")
    assert stack.keyring().passphrase_from == "env:APP_PASSPHRASE"  # where it is read, never the value


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (GOOD.replace("host:", "hots:"), {}, "unknown field 'sources[0] (app-db).hots'; did you mean 'host'?"),
        (GOOD.replace("{path: ./vault}", "{paht: ./vault}"), {}, "unknown field 'vault.paht'; did you mean 'path'?"),
        (GOOD.replace("root: ./app", "paths: [a]"), {}, "missing required field 'sources[1] (files).root'"),
        (GOOD.replace("kind: files", "kind: ftp"), {}, "'kind' as one of postgres, mysql, redis, files"),
        (GOOD.replace("name: files", "name: app-db"), {}, "source name 'app-db' is used twice"),
        (
            GOOD.replace("${PASS_VAR:-BACKUP_ENCRYPTION_PASSWORD}", "${MISSING_VAR}"),
            {},
            "encryption.passphrase_from: environment variable MISSING_VAR is not set",
        ),
        (
            GOOD.replace('passphrase_from: "env:${PASS_VAR:-BACKUP_ENCRYPTION_PASSWORD}"', 'passphrase: "hunter2"'),
            {},
            "field 'encryption.passphrase': a literal passphrase would be stored in Prefect's database; name where it "
            "is read instead, e.g. passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD",
        ),
        (
            GOOD.replace('passphrase_from: "env:${PASS_VAR:-BACKUP_ENCRYPTION_PASSWORD}"', "passphrase_from: vault"),
            {},
            "field 'encryption.passphrase_from': 'vault' is not a secret reference; use env:NAME, file:/path",
        ),
        (GOOD.replace('port: "${DB_PORT:-5432}"', "port: five"), {}, "field 'sources[0] (app-db).port'"),
        ("vault: [unclosed", {}, "not valid YAML"),
    ],
)
def test_bad_stack_names_the_field(tmp_path, text, env, expected):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text, env)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
