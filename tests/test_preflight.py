"""The check that stops `python -m pytest` at once on a machine lacking a server the
suite starts (telephony/testing/preflight.py, called from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from telephony.testing import preflight

ROOT = Path(__file__).resolve().parent.parent


def test_this_machine_has_everything_the_suite_starts():
    assert preflight.missing() == []


def test_a_missing_server_is_named_by_its_package_in_one_line_with_the_command_that_installs_it(monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "PROGRAMS", (*preflight.PROGRAMS, ("no-such-server-7f3a", "no-such-server-pkg")))
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((ROOT / "pyproject.toml").read_text().replace(
        'test = ["pytest>=8,<10",', 'test = ["no-such-dist>=1.0", "pytest>=8,<10",'))
    monkeypatch.setattr(preflight, "PYPROJECT", pyproject)
    lacking = preflight.missing()
    assert lacking == ["no-such-server-pkg", "no-such-dist"]
    line = preflight.report(lacking)
    assert "\n" not in line and "no-such-server-pkg, no-such-dist" in line and "`scripts/test`" in line


def test_the_install_command_installs_what_the_check_looks_for():
    script = (ROOT / "scripts" / "test").read_text()
    for _program, package in preflight.PROGRAMS:
        assert package in script, package
    assert "postgresql" in script
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec scripts/test")
