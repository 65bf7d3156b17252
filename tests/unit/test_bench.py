"""``secchat bench``'s parts that run in seconds: the mode registry, one measurement, and the
line that says how to install matplotlib when it is missing."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from secchat.app.cli import app
from secchat.bench import modes as registry
from secchat.bench.modes import MessageMode, measure, modes, register


def test_modes_come_ours_first_then_the_thesis_then_peers() -> None:
    got = modes()
    names = [m.name for m in got]
    assert {"signed", "group", "thesis-signed", "thesis-group"} <= set(names)
    order = [registry.FAMILIES.index(m.family) for m in got if m.family in registry.FAMILIES]
    assert order == sorted(order)


def test_a_mode_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="twice"):
        register(MessageMode("group", "again", lambda payload: (lambda: b"", lambda frame: None)))


def test_group_mode_round_trip_is_measured_through_the_stack() -> None:
    (group,) = [m for m in modes() if m.name == "group"]
    send, receive = group.prepare(b"x" * 100)
    frame = send()
    assert b"x" * 100 not in frame  # encrypted
    receive(frame)
    with pytest.raises(RuntimeError, match="not delivered"):
        receive(frame)  # a replay is not delivered again
    s, r = measure(group, 1024, 2, 5)
    assert s > 0 and r > 0


def test_bench_without_matplotlib_says_how_to_install_it(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path / "out")])
    assert result.exit_code == 3
    assert "pip install 'secchat[bench]'" in result.output
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


def test_redraw_draws_both_figures_from_the_csvs_and_measures_nothing(tmp_path) -> None:
    import shutil
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "experiments"
    for name in ("fig1_tls.csv", "fig1_cpu.csv", "fig2_messages.csv"):
        shutil.copy(docs / name, tmp_path / name)
    result = CliRunner().invoke(app, ["bench", "--redraw", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("fig1_gke.png", "fig2_messages.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    words = " ".join(result.output.split())  # the ratio tables, however the terminal wraps them
    assert "Group set-up, compute of all members" in words
    assert "the ratio to Megolm measured in this run" in words
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # nothing else written, no CSV rewritten
        "fig1_cpu.csv", "fig1_gke.png", "fig1_tls.csv", "fig2_messages.csv", "fig2_messages.png"]
    assert (tmp_path / "fig2_messages.csv").read_bytes() == (docs / "fig2_messages.csv").read_bytes()


def test_redraw_without_csvs_is_a_usage_error_that_writes_nothing(tmp_path) -> None:
    result = CliRunner().invoke(app, ["bench", "--redraw", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "no figure CSV" in result.output
    assert not (tmp_path / "none").exists()
