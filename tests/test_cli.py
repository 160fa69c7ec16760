import re
import subprocess
import sys

import pytest

from largekernel.bench import SUITES
from largekernel.cli import SUBCOMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "largekernel", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("largekernel ")


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


COMMANDS = [[name] for name in SUBCOMMANDS] + [["bench", suite] for suite in SUITES]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_describes_the_command_and_every_option(argv, capsys):
    code, out, _ = _run([*argv, "--help"], capsys)
    assert code == 0
    usage, description = out.split("\n\n")[:2]
    assert usage.startswith(f"usage: largekernel {' '.join(argv)}") and len(description.split()) >= 6
    lines = out.splitlines()
    entries = 0
    for i, line in enumerate(lines):
        m = re.match(r"^  (-\S.*?|[A-Za-z]\S*)(?:\s{2,}(\S.*))?$", line)
        if not m or i < 2:
            continue
        entries += 1
        following = lines[i + 1] if i + 1 < len(lines) else ""
        documented = m.group(2) or re.match(r"^ {6,}\S", following)
        assert documented, f"no description for {m.group(1)!r} in `largekernel {' '.join(argv)} --help`"
        assert "_" not in re.sub(r"[A-Z_]+", "", m.group(1).split()[0]), f"{m.group(1)!r} is not spelled with dashes"
    assert entries >= 2


@pytest.mark.parametrize("argv,error", [
    (["eval"], "PATH: missing"),
    (["eval", "x", "--split", "val"], "argument --split: invalid choice: 'val'"),
    (["analyze", "x", "--images", "0"], "--images: got 0, expected >= 1"),
    (["bench"], "SUITE: missing"),
    (["bench", "nope"], "unknown suite 'nope'"),
    (["study", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--epochs", "x"], "epochs: got 'x', expected int"),
])
def test_errors_are_one_line_and_a_pointer_to_help(argv, error, capsys):
    code, out, err = _run(argv, capsys)
    prog = "largekernel " + argv[0]
    assert code == 2 and out == ""
    assert err.splitlines() == [f"{prog}: error: {err.splitlines()[0].split('error: ', 1)[1]}", f"see `{prog} --help`"]
    assert error in err


@pytest.mark.parametrize("argv,prog,error", [
    (["study", "--seeds", "0"], "largekernel study", "--seeds must be >= 1, got 0"),
    (["study", "--dataset", "cifar10"], "largekernel study", "--dataset cifar10 needs --data-dir DIR"),
    (["bench", "conv", "--kernels", "4"], "largekernel bench conv", "--kernels must be odd positive sizes, got [4]"),
    (["bench", "conv", "--kernels", "71"], "largekernel bench conv", "--kernels must not exceed --size 56, got 71"),
    (["bench", "conv", "--channels", "0"], "largekernel bench conv", "--channels must be positive, got [0]"),
])
def test_checks_after_parsing_read_as_parsing_errors(argv, prog, error, tmp_path, capsys):
    """The checks a command makes after parsing print what argparse's errors print ("PROG: error: ...", then the
    pointer to --help); they printed "PROG: message" alone."""
    code, out, err = _run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{prog}: error: {error}") and lines[1] == f"see `{prog} --help`"


@pytest.mark.parametrize("sep", ["-", "_"])
def test_every_command_takes_dashes_and_underscores(sep, tmp_path, capsys):
    # Each call stops at a check made after parsing: reaching it shows the flags were accepted.
    data_dir = [f"--data{sep}dir", str(tmp_path)]
    code, _, err = _run(["study", *data_dir, "--seeds", "0"], capsys)
    assert code == 2 and "--seeds must be >= 1" in err
    code, _, err = _run(["eval", str(tmp_path), *data_dir, f"--batch{sep}size", "0"], capsys)
    assert code == 2 and "--batch-size: got 0, expected a positive integer" in err
    code, _, err = _run(["train", *data_dir, "--dataset", "cifar10", f"--eval{sep}batch{sep}size", "0"], capsys)
    assert code == 2 and "eval_batch_size: got 0" in err
    code, _, err = _run(["bench", "conv", f"--min{sep}run{sep}time", "x"], capsys)
    assert code == 2 and "argument --min-run-time: invalid float value: 'x'" in err
    code, _, err = _run(["convert", "--model", "dwnet1d_tiny", f"--model{sep}kwargs", "[1]"], capsys)
    assert code == 2 and "argument --model-kwargs: expected a JSON object" in err


@pytest.mark.parametrize("argv", [["study"], *(["bench", suite, "--quick"] for suite in SUITES)], ids=" ".join)
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_folder_that_cannot_be_written_is_a_usage_error(argv, where, tmp_path, capsys):
    """``--out`` naming a file, or a folder that cannot be made, fails at once with a one-line error naming
    ``--out`` (exit 2): study ended in a worker's traceback and bench measured for minutes, then failed writing."""
    blocker = tmp_path / "results.txt"
    blocker.write_text("kept")
    out = blocker if where == "a file" else blocker / "sub"
    code, stdout, err = _run([*argv, "--out", str(out)], capsys)
    prog = "largekernel " + " ".join(argv[:2] if argv[0] == "bench" else argv[:1])
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert err.splitlines()[0].startswith(f"{prog}: error: --out {str(out)!r}: ")
    assert blocker.read_text() == "kept"


_EAGER_USE = """
import sys
sys.modules["timm"] = None  # hidden where installed: importing timm (the models' registration) loads Dynamo itself
import torch
import largekernel, largekernel.functional, largekernel.nn as L, largekernel.optim, largekernel.train, largekernel.study
from largekernel.models import create_model

for layer, shape in [(L.Conv2d(4, 4, 9, padding=4, backend="fft"), (2, 4, 12, 12)),
                     (L.DclsConv2d(4, 4, 5, 9, padding=4), (2, 4, 12, 12)), (L.FlexConv2d(4, 4, 9), (2, 4, 12, 12)),
                     (L.NIFFConv2d(4, 4), (2, 4, 12, 12)), (L.SGConv1d(4, kernel_size=40), (2, 4, 40)),
                     (L.S4DConv1d(4, kernel_size=40), (2, 4, 40)), (L.SLaKConv2d(4, 4, 9, groups=4), (2, 4, 12, 12)),
                     (create_model("dwnet2d_tiny", num_classes=3, in_chans=4, conv="dcls"), (2, 4, 12, 12))]:
    layer(torch.randn(shape)).sum().backward()
    layer.eval()(torch.randn(shape))
print(sorted(m for m in ("torch._dynamo", "torch._inductor", "sympy") if m in sys.modules))
"""


def test_importing_and_running_the_library_eagerly_never_loads_the_compiler():
    """A command's start and eager forwards and backwards pay torch's import, not torch.compile's: Dynamo,
    inductor and sympy (1.4-2.4 s more of a process's start here) load only when something compiles (or where torch
    loads them itself: its optimizers do at their first construction)."""
    done = subprocess.run([sys.executable, "-c", _EAGER_USE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
