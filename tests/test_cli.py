"""lenet.cli.exit_with: how every command ends when its work is over."""

import signal

import pytest

from lenet.cli import exit_with


def test_a_ctrl_c_after_the_commands_own_handler_ends_it_as_130_without_a_traceback(capsys):
    """A Ctrl-C that lands after a command's work (`python -m reports` had written its page and
    was printing where) escapes the command's own handler: it ends with status 130, not a
    KeyboardInterrupt traceback."""
    def main():
        print("report: somewhere/index.html")
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as ended:
        exit_with(main)
    assert ended.value.code == 128 + signal.SIGINT
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_a_commands_status_is_its_exit_status():
    with pytest.raises(SystemExit) as ended:
        exit_with(lambda: 2)
    assert ended.value.code == 2
