"""``secchat directory serve`` fails with one sentence and exit code 1, never a traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from secchat import pki
from secchat.directory.cli import directory_app


def _serve(*args: str):
    return CliRunner().invoke(directory_app, ["serve", *args])


def test_missing_ca_bundle(tmp_path):
    result = _serve("--ca", str(tmp_path / "none.pem"), "--db", str(tmp_path / "d.sqlite3"))
    assert result.exit_code == 1
    assert "no CA bundle" in result.output and "Traceback" not in result.output


def test_junk_ca_bundle(tmp_path):
    (tmp_path / "ca.pem").write_text("junk")
    result = _serve("--ca", str(tmp_path / "ca.pem"))
    assert result.exit_code == 1 and "PEM" in result.output


def test_unsupported_database(tmp_path):
    _, ca = pki.create_ca("CLI CA")
    (tmp_path / "ca.pem").write_bytes(pki.cert_to_pem(ca))
    result = _serve("--ca", str(tmp_path / "ca.pem"), "--db", "mysql://nobody@localhost/x")
    assert result.exit_code == 1
    assert "cannot open the database" in result.output and "Traceback" not in result.output
