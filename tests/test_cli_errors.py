"""Every command line reports a user error as ONE line on stderr with exit status 2 (a traceback only with
``--debug``), and a run in which no request finished as one line with status 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from odrive.cli import main as odrive_main
from odrive.cli_errors import CLIParser, check_served, cli_main, one_line, user_input
from odrive.errors import ConfigError, RunError

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = "poisson:rate=5,n=8,prompt=50,output=5"


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    header = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
    (tmp_path / "bad_row.csv").write_text(header + "0,10,5\n1,abc,5\n")
    (tmp_path / "huge.csv").write_text(header + "0,10,5\n0.5,12,4\n1,100000000000000000000000000,5\n")
    (tmp_path / "a_dir.csv").mkdir()
    (tmp_path / "grid.yaml").write_text("grid: [\n")
    (tmp_path / "replicas.json").write_text('[{"bogus_field": 1}]')
    return tmp_path


def sim(tmp: Path, *flags: str) -> list[str]:
    return ["sim", "--workload", WORKLOAD, "--no-progress", "--out", str(tmp / "out"), *flags]


USER_ERRORS = [  # (argv builder, what the one line says)
    (lambda t: sim(t, "--workload", str(t / "bad_row.csv")), "bad_row.csv:3: non-numeric value 'abc'"),
    (lambda t: sim(t, "--workload", str(t / "huge.csv")), "huge.csv:4: prompt length"),  # 10^26 keeps its line
    (lambda t: sim(t, "--workload", str(t / "a_dir.csv")), "a_dir.csv"),
    (lambda t: sim(t, "--workload", str(t / "missing.csv")), "trace file not found"),
    (lambda t: sim(t, "--workload", "poisson:rate=oops"), "bad workload spec 'poisson:rate=oops'"),
    (lambda t: sim(t, "--page-size", "0"), "page_size must be >= 1, got 0"),
    (lambda t: sim(t, "--hbm-utilization", "1.5"), "hbm_utilization must be in (0, 1], got 1.5"),
    (lambda t: sim(t, "--scheduler", "bogus"), "unknown scheduler 'bogus'; registered: cache-aware, "),
    (lambda t: sim(t, "--allocator", "bogus"), "unknown allocator 'bogus'; registered: buddy, "),
    (lambda t: sim(t, "--allocator-arg", "bogus=1"), "allocator 'free-list' has no option bogus"),
    (lambda t: sim(t, "--allocator", "contiguous", "--allocator-arg", "reservation=nope"), "reservation must be"),
    (lambda t: sim(t, "--scheduler", "sjf", "--scheduler-arg", "predictor=psychic"), "unknown output-length"),
    (lambda t: sim(t, "--page-size", "x"), "argument --page-size: invalid int value: 'x'"),
    (lambda t: sim(t, "--no-such-flag"), "unrecognized arguments: --no-such-flag"),
    (lambda t: ["serve", "--model", str(t / "missing-model")], "missing-model"),
    (lambda t: ["serve", "--model", str(t), "--max-n", "0"], "max_n must be > 0"),
]


@pytest.mark.parametrize(("argv", "says"), USER_ERRORS, ids=[s for _, s in USER_ERRORS])
def test_user_errors_are_one_line_and_exit_2(traces, capsys, argv, says):
    try:
        code = odrive_main(argv(traces))
    except SystemExit as exit_:  # argparse exits by itself
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(("odrive: error: ", "odrive sim: error: ", "odrive serve: error: ")), err
    assert says in err, err


def test_a_run_that_rejects_every_request_exits_1_with_the_reason(tmp_path, capsys):
    code = odrive_main(sim(tmp_path, "--workload", "poisson:rate=5,n=6,prompt=20000,output=5"))
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == (
        "odrive: error: all 6 requests were rejected, none finished: prompt has 20000 tokens, more than "
        "max_prefill_length=16384 (6 of them)\n"
    )
    assert (tmp_path / "out" / "requests.csv").exists()  # the tables are still written
    assert "finished" in captured.out


def test_debug_shows_the_traceback(traces):
    with pytest.raises(ConfigError, match="page_size must be >= 1"):
        odrive_main([*sim(traces, "--page-size", "0"), "--debug"])


@pytest.mark.parametrize(
    ("module", "args", "says", "status"),
    [
        ("sim", ["--workload", "{t}/huge.csv"], "huge.csv:4: prompt length", 2),
        ("sim.cluster", ["--replicas", "2", "--replica-configs", "{t}/replicas.json"], "bogus_field", 2),
        ("sim.cluster", ["--replicas", "2", "--workload", "poisson:rate=5,n=4,prompt=20000,output=5"],
         "all 4 requests were rejected", 1),
        ("sim.sweep", ["{t}/grid.yaml", "--out", "{t}/sweep"], "grid.yaml: not valid YAML", 2),
        ("experiments.fragmentation", ["--replot", "--out", "{t}/nothing"], "fragmentation.csv does not exist", 1),
        ("experiments.throughput_latency", ["--workers", "x"], "invalid int value: 'x'", 2),
    ],
)  # fmt: skip
def test_each_command_line_prints_one_line_without_traceback(traces, module, args, says, status):
    """Through the real entry points (``python -m ...``), as a user runs them."""
    argv = [a.format(t=traces) for a in args]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", module, "--no-progress", "--out", str(traces / "out"), *argv]
                          if module.startswith("sim") and module != "sim.sweep" else
                          [sys.executable, "-m", module, *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert says in proc.stderr, proc.stderr


# --- the helper itself ------------------------------------------------------------------------------------
def test_cli_main_maps_errors_to_statuses_and_lets_bugs_through(capsys):
    def failing(exc: BaseException):
        @cli_main("prog")
        def main(argv=None) -> int:
            raise exc

        return main

    assert failing(ConfigError("bad\n  value"))([]) == 2
    assert capsys.readouterr().err == "prog: error: bad value\n"
    assert failing(FileNotFoundError("no such file: x"))([]) == 2
    assert failing(RunError("nothing finished"))([]) == 1
    assert capsys.readouterr().err.endswith("prog: error: nothing finished\n")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        failing(ZeroDivisionError("bug"))([])
    with pytest.raises(ConfigError):
        failing(ConfigError("bad"))(["--debug"])


def test_user_input_marks_value_errors_and_the_parser_is_one_line(capsys):
    with pytest.raises(ValueError, match="^--workload: rate must be > 0$") as info:
        with user_input("--workload"):
            raise ValueError("rate must be > 0")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(TypeError), user_input("x"):  # not the user's: unchanged
        raise TypeError("bug")
    parser = CLIParser(prog="p")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--n", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "p: error: argument --n: invalid int value: 'x' (see --help)\n"
    assert one_line(KeyError("unknown 'x'")) == "unknown 'x'"


def test_check_served_passes_any_finished_run():
    import pandas as pd

    rows = pd.DataFrame({"status": ["aborted", "finished"], "finish_reason": ["rejected", "length"],
                         "message": ["too long", ""]})  # fmt: skip
    check_served(rows)
    check_served(rows.iloc[:0])
    with pytest.raises(RunError, match="all 1 requests were rejected, none finished: too long"):
        check_served(rows.iloc[:1])


COUNT_FLAGS = [  # (experiment module, flags, what the one line says): counts are checked before anything runs
    ("validate_policies", ["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    ("validate_policies", ["--requests", "-3"], "argument --requests: must be >= 1, got -3"),
    ("validate_sim", ["--num-pages", "0"], "argument --num-pages: must be >= 1, got 0"),
    ("validate_sim", ["--repeats", "x"], "argument --repeats: expected a whole number >= 1, got 'x'"),
]


@pytest.mark.parametrize(("module", "flags", "says"), COUNT_FLAGS, ids=[s for *_, s in COUNT_FLAGS])
def test_validation_count_flags_out_of_range_are_one_line(capsys, module, flags, says):
    main = __import__(f"experiments.{module}", fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_:
        main(flags)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err == f"python -m experiments.{module}: error: {says} (see --help)\n"
