"""The operator commands' help and their argument errors, through the real click commands (in process).

Only errors found before the command talks to Kafka are here; the ones that need a broker's answer
are in tests/integration/streams/tools/test_streams_tools_cli_e2e.py.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from faust.cli.base import cli

import faust_app
import streams.tools.dlq
import streams.tools.offsets
import streams.tools.produce
import streams.tools.replay
import streams.tools.tail
import streams.tools.topics  # noqa: F401  (importing a command module registers the command)

COMMANDS = ("topics", "tail", "produce", "replay", "dlq", "offsets")


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), app=faust_app.app)
    return result.exit_code, result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_explains_itself_with_an_example(name: str) -> None:
    code, output = _invoke(name, "--help")
    assert code == 0, output
    assert "Example" in output, f"soma {name} --help has no example"
    assert f"soma {name} " in output.split("Example", 1)[1]


BAD_ARGUMENTS: list[tuple[tuple[str, ...], str]] = [
    (("replay", "soma.usage.events"), "Missing option '--to'"),
    (("replay", "soma.usage.events", "--to", "x", "--since", "3 fortnights"), "cannot read the time '3 fortnights'"),
    (("replay", "soma.usage.events", "--to", "x", "--since", "1700000000"), "looks like seconds"),
    (("replay", "soma.usage.events", "--to", "x", "--rate", "fast"), "cannot read the rate 'fast'"),
    (("replay", "soma.usage.events", "--to", "x", "--since", "2021-01-01", "--until", "2020-01-01"),
     "is before --since"),
    (("replay", "soma.usage.events", "--to", "x", "--field", "action"), "--field takes NAME=VALUE"),
    (("replay", "soma.usage.events", "--to", "x", "--header", "=v"), "--header takes NAME=VALUE"),
    (("replay", "soma.usage.events", "--to", "x", "--start-offset", "9", "--end-offset", "3"),
     "--end-offset is before --start-offset"),
    (("offsets", "reset", "--group", "g"), "exactly one of"),
    (("offsets", "reset", "--group", "g", "--to-earliest", "--shift-by", "-5"), "exactly one of"),
    (("offsets", "reset", "--group", "g", "--to-time", "soon"), "cannot read the time 'soon'"),
    (("offsets", "show", "--group", "g", "--to-latest"), "options of 'offsets reset'"),
    (("offsets", "rewind", "--group", "g"), "'rewind' is not one of 'show', 'reset'"),
    (("offsets", "show"), "Missing option '--group'"),
    (("dlq", "show"), "takes one TOPIC"),
    (("dlq", "redrive", "soma.training.lock.state"), "is not a dead-letter topic"),
    (("dlq", "list", "--execute"), "options of 'redrive'"),
    (("dlq", "redrive", "soma.usage.events", "--entry", "3"), "PARTITION:OFFSET"),
    (("tail", "soma.usage.events", "--offset", "5", "--since", "1h"), "only one of"),
    (("produce", "soma.training.lock.commands.dlq"), "dead-letter topic"),
    (("produce", "no.such.topic"), "unknown topic 'no.such.topic'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_usage_errors_with_a_clear_message(args: tuple[str, ...], message: str) -> None:
    code, output = _invoke(*args)
    assert code == 2, output
    assert message in output
    assert "Traceback" not in output


def test_produce_reports_every_bad_line_and_sends_nothing(tmp_path: pytest.TempPathFactory) -> None:
    lines = "\n".join([
        '{"tenant": "acme", "action": "status", "user": "ann"}',
        '{"tenant": "acme", "action": "explode", "user": "ann"}',
        "not json",
        '{"tenant": "acme", "action": "status", "user": "ann"}',
    ])
    result = CliRunner().invoke(cli, ["produce", "soma.training.lock.commands", "--json"], app=faust_app.app,
                                input=lines)
    assert result.exit_code == 1, result.output
    assert "line 2: LockCommand: action" in result.output and "explode" in result.output
    assert "line 3: not valid JSON" in result.output
    assert "2 of 4 lines are invalid; nothing was sent" in result.output
