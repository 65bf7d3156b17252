"""``secchat sim check`` on the command line: summary last, exit status, replayable seeds."""

from __future__ import annotations

import functools
import re

import pytest
from typer.testing import CliRunner

from secchat.app.cli import app
from secchat.protocols.consensus import majority
from secchat.protocols.stack import Member
from secchat.sim import checker

from .test_checker import DecideOnMinority, SkipsThePath

runner = CliRunner()


def _check(*args: str):
    return runner.invoke(app, ["sim", "check", "--jobs", "1", "-q", *args])


def test_clean_campaign_exits_zero_with_the_summary_last() -> None:
    result = _check("--protocol", "gke", "--n", "5", "--runs", "30", "--crash", "2", "--seed", "3")
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert re.fullmatch(
        r"gke n=5 crash=2: 30 runs, 0 violations; messages median \d+ p95 \d+; "
        r"time to finish median [\d.]+ s p95 [\d.]+ s",
        last,
    ), last


def test_violations_exit_non_zero_and_print_a_replay_that_reproduces(monkeypatch: pytest.MonkeyPatch) -> None:
    real = checker.run_one
    broken = functools.partial(Member, consensus_cls=DecideOnMinority)
    monkeypatch.setattr(checker, "run_one", lambda *a, **k: real(*a, **{**k, "factory": broken}))
    result = _check("--protocol", "consensus", "--n", "5", "--runs", "300", "--seed", "7")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert "violations" in lines[-1] and " 0 violations" not in lines[-1]
    replay = next(line.split("replay: ")[1] for line in lines if "replay: " in line)
    seed = int(re.search(r"--seed (\d+)", replay).group(1))
    assert checker.run_one("consensus", 5, 0, seed, factory=broken).violations
    again = runner.invoke(app, [*replay.split()[1:], "--jobs", "1", "-q"])
    assert again.exit_code == 1 and "1 runs, 1 violations" in again.output


def test_a_broken_mode_prints_a_replay_with_its_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    real = checker.run_one
    monkeypatch.setattr(checker, "run_one", lambda *a, **k: real(*a, **{**k, "auth": SkipsThePath}))
    result = _check("--protocol", "smc", "--n", "4", "--runs", "20", "--seed", "5", "--auth", "burst")
    assert result.exit_code == 1, result.output
    replay = next(line for line in result.output.splitlines() if "replay: " in line)
    assert replay.endswith("--auth burst"), replay


def test_an_unknown_mode_is_refused() -> None:
    result = _check("--protocol", "smc", "--auth", "fast")
    assert result.exit_code == 2
    assert "signed, burst, pairwise, group" in result.output


def test_too_many_crashes_is_refused() -> None:
    result = _check("--protocol", "smc", "--n", "7", "--crash", "4")
    assert result.exit_code == 2
    assert "at most 3 of 7 members may crash" in result.output


@pytest.mark.parametrize("protocol", ["consensus", "gke", "smc"])
def test_campaign_at_twenty_one_members(protocol: str) -> None:
    result = checker.run_campaign(protocol, 21, 60, seed=21_000, crash=21 - majority(21), jobs=1)
    assert not result.failures, [f.violations for f in result.failures[:3]]
