import subprocess
import sys


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "ctdip.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "ctdip" in out.stdout.lower() or "usage" in out.stdout.lower()


def test_unknown_option_is_one_line_exit_2():
    out = subprocess.run([sys.executable, "-m", "ctdip.cli.main", "--no-such-option"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "Traceback" not in out.stderr
