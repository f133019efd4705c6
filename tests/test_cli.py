"""The messagebus command: run, check, schemes."""

import importlib
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from messagebus.__main__ import main
from messagebus.transports import Destination, DestinationKind


def test_check_validates_and_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "memory://x?max_message_size=5"]) == 0
    assert "MemoryTransport" in capsys.readouterr().out
    assert main(["check", "memory://u:hunter2@x?bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'bogus'" in err
    assert "hunter2" not in err


def test_schemes_lists_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemes"]) == 0
    assert "memory" in capsys.readouterr().out.split()


def test_run_starts_the_bus_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(
        textwrap.dedent(
            """
            from messagebus import Bus
            bus = Bus.from_url("memory://cli", service="svc")

            @bus.consume("jobs")
            async def job(n: int) -> None: ...
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "messagebus", "run", "svc:bus", "--grace", "5"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "Bus(service='svc', url='memory://cli', state=running) running" in line
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "messagebus", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_run_rejects_a_non_bus(tmp_path: Path) -> None:
    """Catches `run mod:not_a_bus` failing with a traceback or exit 1 instead of a usage error
    that says what the attribute is and where the module's Bus objects are."""
    (tmp_path / "notbus.py").write_text("from messagebus import Bus\nbus = 42\nreal = Bus.from_url('memory://')\n")
    result = _run_cli(tmp_path, "run", "notbus:bus")
    assert result.returncode == 2
    assert "error: notbus:bus is int, not a messagebus.Bus" in result.stderr
    assert "Bus objects in 'notbus': notbus:real" in result.stderr
    assert "Traceback" not in result.stderr


RST_MARKUP = re.compile(r"``|:(class|meth|func|attr|mod|exc|data|obj):`|^\.\. ", re.MULTILINE)


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["check", "--help"], ["schemes", "--help"], ["names", "--help"]]
)
def test_help_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Catches reST markup (``double backticks``, :class: roles) leaking from docstrings into
    `messagebus --help`: argparse prints text as written, so the help must be plain text."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: messagebus")
    assert RST_MARKUP.search(out) is None, out


def test_run_missing_attribute_names_the_module_s_buses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Catches `run mod:missing` answering "mod:missing is NoneType": it must say the module has
    no such attribute, list the Bus objects it does have (or say it has none), and exit 2."""
    (tmp_path / "cli_svc_two.py").write_text(
        "from messagebus import Bus\nbilling = Bus.from_url('memory://')\naudit = Bus.from_url('memory://')\n"
    )
    (tmp_path / "cli_svc_none.py").write_text("x = 1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.syspath_prepend(str(tmp_path))
        assert main(["run", "cli_svc_two:missing"]) == 2
        err = capsys.readouterr().err
        assert "module 'cli_svc_two' has no attribute 'missing'" in err
        assert "cli_svc_two:audit, cli_svc_two:billing" in err
        assert "NoneType" not in err
        assert main(["run", "cli_svc_none:bus"]) == 2
        err = capsys.readouterr().err
        assert "module 'cli_svc_none' has no attribute 'bus'" in err
        assert "defines no messagebus.Bus" in err
    for name in ("cli_svc_two", "cli_svc_none"):
        sys.modules.pop(name, None)


def test_run_missing_module_or_broken_factory_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Catches a missing module reported as a traceback or as something else, a module whose own
    import fails blamed on the command line's module name, and a factory needing arguments
    crashing with TypeError: each is a clear usage error, exit 2."""
    (tmp_path / "cli_svc_broken.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "cli_svc_factory.py").write_text(
        "from messagebus import Bus\ndef make(url): return Bus.from_url(url)\ndef make_none(): return None\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.syspath_prepend(str(tmp_path))
        assert main(["run", "no_such_module_xyz:bus"]) == 2
        assert "no module named 'no_such_module_xyz'" in capsys.readouterr().err
        assert main(["run", "cli_svc_broken:bus"]) == 2
        assert "importing 'cli_svc_broken' failed: No module named 'no_such_dependency_xyz'" in capsys.readouterr().err
        assert main(["run", "cli_svc_factory:make"]) == 2
        assert "cli_svc_factory:make is a function that needs arguments" in capsys.readouterr().err
        assert main(["run", "cli_svc_factory:make_none"]) == 2
        assert "cli_svc_factory:make_none() returned NoneType, not a messagebus.Bus" in capsys.readouterr().err
        assert main(["run", "nocolon"]) == 2
        assert "expected MODULE:ATTRIBUTE" in capsys.readouterr().err
    sys.modules.pop("cli_svc_factory", None)


def _names_output(text: str) -> dict[str, dict[str, str]]:
    """``messagebus names`` output as section title -> role -> name."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = sections[line[:-1]] = {}
        elif line.startswith("  ") and current is not None:
            role, value = line.split()
            current[role] = value
    return sections


def test_names_on_memory_prints_the_logical_names(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches `messagebus names` failing on a transport with no physical_names function
    (memory://): it prints the logical names, including the dead-letter queue, and exits 0."""
    assert main(["names", "memory://", "orders.created", "billing"]) == 0
    sections = _names_output(capsys.readouterr().out)
    assert sections == {
        "topic 'orders.created' group 'billing' (subscribe)": {
            "topic": "orders.created",
            "dead_letter": "orders.created.billing.dlq",
        }
    }


def test_names_on_a_broker_url_are_the_adapter_s_physical_names_under_the_url_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Catches `messagebus names` printing names the transport would not use: they must be the
    adapter's physical_names under the URL's options (a queue prefix, FIFO suffixes), for a
    group's subscription and, without a group, for both the topic and the queue; no I/O (no
    endpoint runs on port 9)."""
    sqs = pytest.importorskip("messagebus_sqs")
    url = "sqs://?region=us-east-1&endpoint_url=http://127.0.0.1:9&queue_prefix=dev-&fifo=true"
    options = sqs.SqsTransport.from_url(url).options
    assert main(["names", url, "orders.created", "billing"]) == 0
    out = capsys.readouterr().out
    group = Destination(DestinationKind.TOPIC, "orders.created", "billing")
    expected = sqs.physical_names(group, options)
    assert _names_output(out) == {"topic 'orders.created' group 'billing' (subscribe)": expected}
    assert expected["queue"].startswith("dev-") and expected["queue"].endswith(".fifo")
    assert "per-key order: yes" in out
    assert main(["names", url, "jobs"]) == 0
    assert _names_output(capsys.readouterr().out) == {
        "topic 'jobs' (publish)": sqs.physical_names(Destination(DestinationKind.TOPIC, "jobs"), options),
        "queue 'jobs' (send and consume)": sqs.physical_names(Destination(DestinationKind.QUEUE, "jobs"), options),
    }


def test_names_refuses_bad_names_and_urls_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches an illegal destination or group name, or a bad URL, reaching the adapter (or a
    traceback) instead of a usage error saying what is allowed, exit 2, password redacted."""
    assert main(["names", "memory://", "bad name"]) == 2
    assert "illegal destination name 'bad name'" in capsys.readouterr().err
    assert main(["names", "memory://", "orders", ".g"]) == 2
    assert "illegal group name '.g'" in capsys.readouterr().err
    assert main(["names", "memory://u:hunter2@x?bogus=1", "orders"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'bogus'" in err and "hunter2" not in err


def test_every_installed_adapter_has_physical_names_with_the_one_signature() -> None:
    """Catches an adapter whose public physical_names is missing or has another signature than
    ``physical_names(destination, options=None)``, which `messagebus names` calls on every
    adapter alike."""
    checked = []
    for ep in entry_points(group="messagebus.transports"):
        factory = ep.load()
        cls = getattr(factory, "__self__", factory)
        if cls.__module__.startswith("messagebus."):
            continue  # memory://, the core's own: logical names are its names
        package = importlib.import_module(cls.__module__.partition(".")[0])
        function = getattr(package, "physical_names", None)
        assert callable(function), f"{package.__name__} has no public physical_names"
        assert "physical_names" in package.__all__, package.__name__
        params = list(inspect.signature(function).parameters.values())
        assert [p.name for p in params] == ["destination", "options"], package.__name__
        assert params[1].default is None, package.__name__
        checked.append(package.__name__)
    assert checked, "no adapter installed"
