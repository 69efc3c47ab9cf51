"""Trace readers chosen by extension and header: Mooncake JSONL (hash ids -> shared token blocks), raw Azure,
BurstGPT, lengths-only CSV; the options every format takes; one clear file:line error per bad row."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from sim.workloads import TraceFormatError, load_trace, parse_workload
from sim.workloads.trace import read_trace

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"
MOONCAKE = TRACES / "mooncake_conversation.jsonl.xz"
BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
LENGTHS_HEADER = "num_prefill_tokens,num_decode_tokens,pd_ratio\n"


def mooncake_records(n: int | None = None) -> list[dict]:
    with lzma.open(MOONCAKE, "rt") as f:
        return [json.loads(line) for _, line in zip(range(n or 10**9), f, strict=False)]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- Mooncake -------------------------------------------------------------------------------------------


def test_the_shipped_mooncake_trace() -> None:
    w = load_trace(MOONCAKE)
    assert len(w) == 12_031 and w.name == "mooncake_conversation"
    assert w.arrival_times[0] == 0 and 3500 < w.duration < 3600  # one hour
    assert w.prompt_lens.mean() == pytest.approx(12_035, rel=0.001)
    assert w.output_lens.mean() == pytest.approx(343, rel=0.01)
    assert len(w.prompt_token_ids) == len(w)


def test_hash_ids_become_shared_token_blocks() -> None:
    records = mooncake_records(300)
    w = load_trace(MOONCAKE, max_requests=300)
    prompts = w.prompt_token_ids
    ids = [prompts[i] for i in range(len(w))]
    for i in (0, 1, 7, 120, 299):
        assert len(ids[i]) == records[i]["input_length"] and ids[i].dtype == np.int32
    # Two prompts share exactly their common leading hash ids' blocks.
    pairs = [(i, j) for i in range(60) for j in range(i + 1, 60)]
    for i, j in pairs:
        a, b = records[i]["hash_ids"], records[j]["hash_ids"]
        common = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        n = min(common * 512, len(ids[i]), len(ids[j]))
        np.testing.assert_array_equal(ids[i][:n], ids[j][:n])
        if common < min(len(a), len(b)):  # the next block differs (random tokens: in nearly every position)
            m = min(n + 512, len(ids[i]), len(ids[j]))
            assert (ids[i][n:m] != ids[j][n:m]).mean() > 0.9
    # the same id anywhere in the trace is the same tokens; a partial last block is its block's first tokens
    blocks: dict[int, np.ndarray] = {}
    for i, record in enumerate(records):
        for k, h in enumerate(record["hash_ids"]):
            block = ids[i][k * 512 : (k + 1) * 512]
            seen = blocks.setdefault(h, block)
            n = min(len(seen), len(block))
            np.testing.assert_array_equal(seen[:n], block[:n])
            if len(block) > len(seen):
                blocks[h] = block
    # built on access, and a prefix builds only what it needs
    np.testing.assert_array_equal(prompts.prefix(5, 700), ids[5][:700])
    np.testing.assert_array_equal(prompts[3:9][2], ids[5])


def test_block_size_option(tmp_path: Path) -> None:
    rows = [{"timestamp": 0, "input_length": 300, "output_length": 2, "hash_ids": [1, 2, 3]},
            {"timestamp": 5, "input_length": 290, "output_length": 2, "hash_ids": [1, 2, 9]}]  # fmt: skip
    path = write(tmp_path, "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    w = load_trace(path, block_size=128)
    np.testing.assert_array_equal(w.prompt_token_ids[0][:256], w.prompt_token_ids[1][:256])
    assert (w.prompt_token_ids[0][256:290] != w.prompt_token_ids[1][256:]).mean() > 0.9
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: hash_ids has 3 block ids, but input_length=300 makes 1 "):
        load_trace(path)  # 512-token blocks by default
    with pytest.raises(ValueError, match="block_size= applies to Mooncake"):
        load_trace(TRACES / "azure_conv_2023.csv", block_size=128)


def test_mooncake_without_hash_ids_carries_no_token_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"timestamp": 0, "input_length": 9, "output_length": 2}\n\n'
                                      '{"timestamp": 1500, "input_length": 4, "output_length": 1}\n')  # fmt: skip
    w = load_trace(path)
    assert w.prompt_token_ids is None
    np.testing.assert_array_equal(w.arrival_times, [0.0, 1.5])  # milliseconds; blank lines skipped


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        (['{"timestamp": 0, "input_length": 4, "output_length": 1}', "{nope"], 2, "not a JSON object"),
        (["[1, 2]"], 1, "expected a JSON object, got list"),
        (['{"timestamp": 0, "input_length": 4}'], 1, "missing key(s) output_length"),
        (['{"timestamp": "x", "input_length": 4, "output_length": 1}'], 1, "timestamp must be a number"),
        (['{"timestamp": -5, "input_length": 4, "output_length": 1}'], 1, "negative timestamp -5"),
        (['{"timestamp": 9, "input_length": 4, "output_length": 1}', "",
          '{"timestamp": 3, "input_length": 4, "output_length": 1}'], 3, "non-decreasing: 3 comes after 9 on line 1"),
        (['{"timestamp": 0, "input_length": 4.5, "output_length": 1}'], 1, "input_length must be a whole number"),
        (['{"timestamp": 0, "input_length": true, "output_length": 1}'], 1, "input_length must be a whole number"),
        (['{"timestamp": 0, "input_length": 4, "output_length": 0}'], 1, "output_length=0 must be >= 1"),
        (['{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [1, "a"]}'], 1,
         "hash_ids must be a list of integers"),
        (['{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1]}'], 1,
         "hash_ids has 1 block ids, but input_length=600 makes 2 blocks of block_size=512"),
        (['{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [1]}',
          '{"timestamp": 0, "input_length": 4, "output_length": 1}'], 2, "hash_ids missing here but given on line 1"),
    ],
)  # fmt: skip
def test_malformed_mooncake_rows(tmp_path: Path, lines: list[str], line: int, message: str) -> None:
    path = write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(TraceFormatError) as info:
        load_trace(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and message in str(info.value), str(info.value)


# --- raw Azure, BurstGPT, lengths only -----------------------------------------------------------------


def test_raw_azure_csv_with_date_times(tmp_path: Path) -> None:
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE_HEADER
                 + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
                 "2023-11-16 18:16:00.0000000,879,20\n")  # fmt: skip
    w = load_trace(path)
    np.testing.assert_allclose(w.arrival_times, [0.0, 4.314579, 13.31941], atol=1e-6)
    np.testing.assert_array_equal(w.prompt_lens, [374, 396, 879])
    np.testing.assert_array_equal(w.output_lens, [44, 109, 20])
    assert read_trace(path).format == "azure"
    bad = write(tmp_path, "a.csv", AZURE_HEADER + "2023-11-16 18:15:46,374,44\nyesterday,3,4\n")
    with pytest.raises(TraceFormatError, match=r"a\.csv:3: unreadable date-time 'yesterday' in column 'TIMESTAMP'"):
        load_trace(bad)
    late = write(tmp_path, "b.csv", AZURE_HEADER + "2023-11-16 18:15:46,374,44\n2023-11-16 18:15:40,3,4\n")
    with pytest.raises(TraceFormatError, match=r"b\.csv:3: arrival times must be non-decreasing"):
        load_trace(late)


BURST = BURST_HEADER + (
    "5,ChatGPT,472,18,490,Conversation log\n"
    "5,GPT-4,1020,0,1020,Conversation log\n"  # failed
    "9,ChatGPT,300,0,300,API log\n"  # failed
    "12,GPT-4,200,77,277,API log\n"
    "20,ChatGPT,15,4,19,Conversation log\n"
)


def test_burstgpt_drops_and_counts_failed_requests_and_filters_by_model(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURST)
    w = load_trace(path)
    np.testing.assert_array_equal(w.prompt_lens, [472, 200, 15])
    np.testing.assert_array_equal(w.arrival_times, [0.0, 7.0, 15.0])
    assert w.notes == ("BurstGPT_1.csv: dropped 2 failed requests (0 response tokens) of 5",)
    chat = load_trace(path, model="ChatGPT")
    np.testing.assert_array_equal(chat.prompt_lens, [472, 15])
    assert "dropped 1 failed requests (0 response tokens) of 3 of model ChatGPT" in chat.notes[0]
    gpt4 = parse_workload(f"trace:{path}?model=GPT-4")
    np.testing.assert_array_equal(gpt4.output_lens, [77])
    with pytest.raises(ValueError, match=r"no requests of model 'Claude'; models in the trace: ChatGPT \(3\), GPT-4"):
        load_trace(path, model="Claude")
    with pytest.raises(ValueError, match="model= applies to BurstGPT traces only"):
        load_trace(TRACES / "azure_conv_2023.csv", model="ChatGPT")
    negative = write(tmp_path, "b.csv", BURST_HEADER + "1,ChatGPT,4,2,6,x\n2,ChatGPT,4,-1,3,x\n")
    with pytest.raises(TraceFormatError, match=r"b\.csv:3: output length Response tokens=-1 must be >= 0"):
        load_trace(negative)
    empty_prompt = write(tmp_path, "c.csv", BURST_HEADER + "1,ChatGPT,0,2,2,x\n")
    with pytest.raises(TraceFormatError, match=r"c\.csv:2: prompt length Request tokens=0 must be >= 1"):
        load_trace(empty_prompt)


def test_lengths_only_trace_needs_a_rate_or_an_interval(tmp_path: Path) -> None:
    path = write(tmp_path, "arxiv.csv", LENGTHS_HEADER + "3000,200,15\n1200,50,24\n800,10,80\n5000,300,16\n")
    with pytest.raises(ValueError, match=r"arxiv\.csv: a lengths-only trace has no arrival times; add \?rate=R"):
        load_trace(path)
    with pytest.raises(ValueError, match="lengths-only trace has no arrival times"):
        parse_workload(f"trace:{path}")
    spaced = load_trace(path, interval=2.5)
    np.testing.assert_array_equal(spaced.arrival_times, [0, 2.5, 5, 7.5])
    np.testing.assert_array_equal(spaced.prompt_lens, [3000, 1200, 800, 5000])
    poisson = parse_workload(f"trace:{path}?rate=4", seed=3)
    assert poisson.arrival_times[0] == 0 and (np.diff(poisson.arrival_times) > 0).all()
    np.testing.assert_array_equal(poisson.arrival_times, parse_workload(f"trace:{path}?rate=4", seed=3).arrival_times)
    assert not np.array_equal(poisson.arrival_times, parse_workload(f"trace:{path}?rate=4", seed=4).arrival_times)
    with pytest.raises(ValueError, match="not both"):
        load_trace(path, rate=1, interval=1)


def test_poisson_rate_override_of_a_long_trace_has_the_rate() -> None:
    w = load_trace(TRACES / "azure_conv_2023.csv", rate=20.0, seed=1)
    assert (len(w) - 1) / w.duration == pytest.approx(20.0, rel=0.03)


@pytest.mark.parametrize(
    ("name", "text", "line", "message"),
    [
        ("b.csv", BURST_HEADER + "1,ChatGPT,4,2,6,x\n2,ChatGPT,four,2,6,x\n", 3,
         "non-numeric value 'four' in column 'Request tokens'"),
        ("b.csv", BURST_HEADER + "3,ChatGPT,4,2,6,x\n2,ChatGPT,4,2,6,x\n", 3,
         "non-decreasing: Timestamp=2 comes after 3 on line 2"),
        ("l.csv", LENGTHS_HEADER + "10,5,1\n10,,1\n", 3, "missing value in column 'num_decode_tokens'"),
        ("l.csv", LENGTHS_HEADER + "10,5,1\n10.5,5,1\n", 3, "num_prefill_tokens=10.5 is not a whole number"),
        ("a.csv", AZURE_HEADER + "2023-11-16 18:15:46,374,0\n", 2, "output length GeneratedTokens=0 must be >= 1"),
    ],
)  # fmt: skip
def test_malformed_csv_rows(tmp_path: Path, name: str, text: str, line: int, message: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(TraceFormatError) as info:
        load_trace(path, interval=1)
    assert str(info.value).startswith(f"{path}:{line}: ") and message in str(info.value), str(info.value)


def test_unrecognised_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"u\.csv:1: unrecognised trace header a, b; known formats: vidur"):
        load_trace(write(tmp_path, "u.csv", "a,b\n1,2\n"))
    with pytest.raises(TraceFormatError, match=r"m\.csv:1: missing column\(s\) Response tokens of a burstgpt trace"):
        load_trace(write(tmp_path, "m.csv", "Timestamp,Model,Request tokens\n1,x,2\n"))
    with pytest.raises(TraceFormatError, match=r"unknown trace format '\.parquet'"):
        load_trace(write(tmp_path, "t.parquet", "x"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_trace(tmp_path / "nope.jsonl")
    with pytest.raises(TraceFormatError, match="no requests"):
        load_trace(write(tmp_path, "e.jsonl", "\n\n"))


# --- options for every format, compression ---------------------------------------------------------------


@pytest.fixture
def every_format(tmp_path: Path) -> dict[str, str]:
    """A spec prefix per format, each with 6+ requests (lengths-only gets an interval)."""
    jsonl = "".join(json.dumps({"timestamp": 1000 * i, "input_length": 10 + i, "output_length": 2}) + "\n"
                    for i in range(8))  # fmt: skip
    azure = AZURE_HEADER + "".join(f"2023-11-16 18:15:{10 + i:02d},{10 + i},2\n" for i in range(8))
    burst = BURST_HEADER + "".join(f"{i},ChatGPT,{10 + i},2,{12 + i},x\n" for i in range(8))
    vidur = "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(f"{i},{10 + i},2\n" for i in range(8))
    lengths = LENGTHS_HEADER + "".join(f"{10 + i},2,1\n" for i in range(8))
    with gzip.open(tmp_path / "v.csv.gz", "wt") as f:
        f.write(vidur)
    return {
        "mooncake": f"trace:{write(tmp_path, 'm.jsonl', jsonl)}?",
        "azure": f"trace:{write(tmp_path, 'a.csv', azure)}?",
        "burstgpt": f"trace:{write(tmp_path, 'b.csv', burst)}?",
        "vidur": f"trace:{write(tmp_path, 'v.csv', vidur)}?",
        "vidur.gz": f"trace:{tmp_path / 'v.csv.gz'}?",
        "lengths": f"trace:{write(tmp_path, 'l.csv', lengths)}?interval=1&",
    }


@pytest.mark.parametrize("fmt", ["mooncake", "azure", "burstgpt", "vidur", "vidur.gz", "lengths"])
def test_start_max_requests_and_time_scale_work_for_every_format(every_format: dict[str, str], fmt: str) -> None:
    spec = every_format[fmt]
    whole = parse_workload(spec.rstrip("?&"))
    assert len(whole) == 8
    np.testing.assert_allclose(whole.arrival_times, np.arange(8.0))
    np.testing.assert_array_equal(whole.prompt_lens, 10 + np.arange(8))
    part = parse_workload(spec + "start=2&max_requests=3&time_scale=0.5")
    np.testing.assert_array_equal(part.prompt_lens, [12, 13, 14])
    np.testing.assert_allclose(part.arrival_times, [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="start=8 is past"):
        parse_workload(spec + "start=8")
