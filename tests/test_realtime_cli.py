"""The `serve` and `mic` commands are registered with `talkstream` and parse their options."""
import pytest

from clients.cli import main


@pytest.mark.parametrize("command, option", [("serve", "--max-sessions"), ("mic", "--out")])
def test_command_is_registered(command, option, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert option in capsys.readouterr().out
