"""What README.md tells a newcomer to type works: the clone install, the pytest setup."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str, section: str) -> list[str]:
    """The ``lang`` code blocks of README's ``section`` (a heading), verbatim."""
    start = README.index(section)
    end = README.find("\n#", start + len(section))
    text = README[start : end if end > 0 else None]
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_clone_install_names_every_adapter() -> None:
    """Catches README's install-from-a-clone command missing an adapter (a new one under
    adapters/ not added, or a path renamed): every adapters/*/pyproject.toml is installed by it."""
    commands = "\n".join(_blocks("bash", "## Five-minute quick start"))
    install = next(line for line in commands.splitlines() if "pip install -e ." in line)
    paths = set(re.findall(r"-e (adapters/\S+)", install))
    for names in re.findall(r"-e adapters/\{([^}]*)\}", install):  # bash brace expansion
        paths |= {f"adapters/{name}" for name in names.split(",")}
    paths = {p for p in paths if "{" not in p}
    adapters = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("adapters/*/pyproject.toml")}
    assert paths == adapters


def test_testing_extra_installs_what_the_plugin_imports() -> None:
    """Catches the ``testing`` extra missing a package the pytest plugin needs: the plugin is
    imported in a fresh interpreter and every third-party distribution it loaded must come
    from the core's dependencies, the ``testing`` extra, or what those depend on."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = [Requirement(r) for r in project["optional-dependencies"]["testing"]]
    assert {r.name for r in extra} >= {"pytest", "pytest-asyncio"}
    allowed: set[str] = set()
    todo = [Requirement(r).name for r in project["dependencies"]] + [r.name for r in extra]
    while todo:
        name = _norm(todo.pop())
        if name in allowed:
            continue
        allowed.add(name)
        for req in metadata.requires(name) or []:
            parsed = Requirement(req)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                todo.append(parsed.name)
    # What the interpreter loads by itself (site hooks such as setuptools' .pth) is not ours.
    baseline = set(_top_modules(""))
    owners = metadata.packages_distributions()
    loaded = {
        _norm(dist)
        for module in set(_top_modules("import messagebus.testing.plugin, pytest_asyncio")) - baseline
        if module not in sys.stdlib_module_names
        for dist in owners.get(module, [])
    }
    assert loaded - {"messagebus-sdk"} <= allowed, f"not installed by messagebus-sdk[testing]: {loaded - allowed}"


def _top_modules(imports: str) -> list[str]:
    probe = f"import sys, json\n{imports}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    result: list[str] = json.loads(out)
    return result


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _run_pytest(project: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(project), str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


USER_TEST = textwrap.dedent(
    """
    from messagebus.testing import wait_idle

    async def test_the_plugin_fixtures_work(bus_factory):
        seen = []
        bus = bus_factory("billing")

        @bus.consume("emails")
        async def send_email(to: str) -> None:
            seen.append(to)

        async with bus:
            await bus.send("emails", "a@example.com")
            await wait_idle(bus)
        assert seen == ["a@example.com"]
    """
)


def test_the_readme_pytest_setup_runs_the_plugin(tmp_path: Path) -> None:
    """Catches README's pytest setup not being enough to use the plugin: a user project with
    only the README's pyproject snippet runs an async test on ``bus_factory``; and without the
    snippet the same test does not pass, so the README must keep saying it is needed."""
    (snippet,) = _blocks("toml", "### Testing your services")
    with_config = tmp_path / "with_config"
    without = tmp_path / "without_config"
    for project in (with_config, without):
        project.mkdir()
        (project / "test_user.py").write_text(USER_TEST)
    (with_config / "pyproject.toml").write_text(snippet)
    (without / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    result = _run_pytest(with_config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    result = _run_pytest(without)
    assert result.returncode != 0, "the plugin works without asyncio_mode = auto: update README"


@pytest.mark.parametrize("needed", ["pytest-asyncio", 'asyncio_mode = "auto"', "messagebus-sdk[testing]"])
def test_readme_says_what_the_plugin_needs(needed: str) -> None:
    """Catches the Testing section losing what a newcomer needs to know before the fixtures work."""
    assert needed in README.split("### Testing your services", 1)[1].split("\n### ", 1)[0]


def test_patterns_example_runs_as_written() -> None:
    """Catches README's request/delay/batch/routing example going stale: it runs verbatim in
    a fresh interpreter and prints the reply, the batch and the routed, delayed event."""
    import subprocess
    import sys

    [code] = _blocks("python", "### Request/reply, delays, batches, routing")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "quote: 9.5"
    assert "audit: orders.created" in lines
