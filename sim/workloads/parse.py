"""Pick a workload with one string (a CLI flag).

Grammar (whitespace around tokens is ignored)::

    SPEC    := KIND ":" BODY
    trace   :  trace:PATH[?KEY=VALUE[&KEY=VALUE...]]      keys: time_scale, max_requests, start, rate, interval,
                                                          block_size (Mooncake), model (BurstGPT)
    poisson :  poisson:rate=R,n=N,prompt=LEN,output=LEN
    gamma   :  gamma:rate=R,cv=C,n=N,prompt=LEN,output=LEN
    LEN     := INT | fixed(INT) | uniform(LO,HI) | lognormal(MEAN,SIGMA[,LO[,HI]])
             | empirical(PATH[,COLUMN])                    COLUMN: prompt | output (default: the role)

The trace format (Vidur, raw Azure, BurstGPT or lengths-only CSV; Mooncake JSONL; optionally compressed) is
chosen by extension and header (``sim.workloads.trace``); a lengths-only trace needs ``rate=`` (Poisson,
seeded) or ``interval=``.

Examples: ``trace:data/traces/azure_conv_2023.csv?time_scale=0.5&max_requests=1000``,
``trace:data/traces/mooncake_conversation.jsonl.xz?max_requests=500``,
``poisson:rate=2,n=1000,prompt=512,output=128``,
``gamma:rate=2,cv=3,n=1000,prompt=lognormal(1000,1),output=uniform(16,256)``.
New kinds: ``register_workload_kind("name", parser)`` with ``parser(body, seed) -> Workload``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from odrive.core.registry import Registry
from odrive.errors import UserError
from sim.workloads.lengths import Empirical, Fixed, LengthDistribution, LogNormal, Uniform
from sim.workloads.request import Workload
from sim.workloads.synthetic import gamma_workload, poisson_workload
from sim.workloads.trace import TraceFormatError, load_trace, read_trace

WorkloadParser = Callable[[str, int], Workload]
WORKLOAD_KINDS: Registry[WorkloadParser] = Registry("workload kind")


class WorkloadSpecError(UserError, ValueError):
    """A workload string that does not follow the grammar in this module's docstring."""


def register_workload_kind(name: str, parser: WorkloadParser) -> WorkloadParser:
    """Make ``name:BODY`` strings build workloads with ``parser(BODY, seed)``."""
    WORKLOAD_KINDS.add(name, parser)
    return parser


def parse_workload(spec: str, seed: int = 0) -> Workload:
    """Build the workload a spec string describes; ``seed`` drives synthetic sampling."""
    kind, sep, body = spec.partition(":")
    kind = kind.strip()
    if not sep or not body.strip():
        raise WorkloadSpecError(
            f"workload spec {spec!r} must look like KIND:BODY; kinds: {', '.join(WORKLOAD_KINDS.names())}"
        )
    if kind not in WORKLOAD_KINDS:
        raise WorkloadSpecError(
            f"unknown workload kind {kind!r} in {spec!r}; kinds: {', '.join(WORKLOAD_KINDS.names())}"
        )
    try:
        return WORKLOAD_KINDS.get(kind)(body.strip(), seed)
    except TraceFormatError:
        raise
    except ValueError as err:  # includes WorkloadSpecError and out-of-range parameters
        raise WorkloadSpecError(f"bad workload spec {spec!r}: {err}") from None


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses: ``"a=f(1,2),b=3"`` -> ``["a=f(1,2)", "b=3"]``."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise WorkloadSpecError(f"unbalanced ')' in {text!r}")
        if char == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth:
        raise WorkloadSpecError(f"unbalanced '(' in {text!r}")
    parts.append("".join(current).strip())
    return parts


def _key_values(text: str, sep: str, allowed: set[str], required: set[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in split_top_level(text, sep):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise WorkloadSpecError(f"expected KEY=VALUE, got {item!r}")
        if key not in allowed:
            raise WorkloadSpecError(f"unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
        if key in pairs:
            raise WorkloadSpecError(f"key {key!r} given twice")
        pairs[key] = value
    missing = required - pairs.keys()
    if missing:
        raise WorkloadSpecError(f"missing key(s) {', '.join(sorted(missing))}")
    return pairs


def _number(text: str, kind: type[int] | type[float], what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise WorkloadSpecError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def parse_length(text: str, role: str = "prompt") -> LengthDistribution:
    """Parse a LEN term; ``role`` ("prompt"/"output") picks the default empirical column."""
    text = text.strip()
    name, paren, rest = text.partition("(")
    name = name.strip().lower()
    if not paren:
        return Fixed(_number(text, int, "length"))
    if not rest.endswith(")"):
        raise WorkloadSpecError(f"length {text!r} lacks a closing ')'")
    args = [a for a in split_top_level(rest[:-1]) if a]
    try:
        if name == "fixed" and len(args) == 1:
            return Fixed(_number(args[0], int, "fixed length"))
        if name == "uniform" and len(args) == 2:
            return Uniform(*(_number(a, int, "uniform bound") for a in args))
        if name == "lognormal" and 2 <= len(args) <= 4:
            mean, sigma = (_number(a, float, "lognormal parameter") for a in args[:2])
            bounds = [_number(a, int, "lognormal bound") for a in args[2:]]
            return LogNormal(mean, sigma, *bounds)
        if name == "empirical" and 1 <= len(args) <= 2:
            column = args[1] if len(args) == 2 else role
            if column not in ("prompt", "output"):
                raise WorkloadSpecError(f"empirical column must be 'prompt' or 'output', got {column!r}")
            rows = read_trace(args[0])
            return Empirical(rows.prompts if column == "prompt" else rows.outputs)
    except (TypeError, ValueError) as err:
        if isinstance(err, WorkloadSpecError):
            raise
        raise WorkloadSpecError(f"length {text!r}: {err}") from None
    raise WorkloadSpecError(
        f"cannot parse length {text!r}; expected INT, fixed(N), uniform(LO,HI), "
        f"lognormal(MEAN,SIGMA[,LO[,HI]]) or empirical(PATH[,prompt|output])"
    )


TRACE_OPTIONS = {"time_scale": float, "max_requests": int, "start": int, "rate": float, "interval": float,
                 "block_size": int, "model": str}  # fmt: skip


def _parse_trace(body: str, seed: int) -> Workload:
    path, _, query = body.partition("?")
    options = _key_values(query, "&", set(TRACE_OPTIONS), set()) if query else {}
    kwargs = {k: v if TRACE_OPTIONS[k] is str else _number(v, TRACE_OPTIONS[k], k) for k, v in options.items()}
    return load_trace(path.strip(), seed=seed, **kwargs)


def _synthetic_args(body: str, extra: set[str]) -> dict[str, Any]:
    keys = {"rate", "n", "prompt", "output"} | extra
    options = _key_values(body, ",", keys, keys)
    args: dict[str, Any] = {
        "rate": _number(options["rate"], float, "rate"),
        "num_requests": _number(options["n"], int, "n"),
        "prompt_len": parse_length(options["prompt"], "prompt"),
        "output_len": parse_length(options["output"], "output"),
    }
    for key in extra:
        args[key] = _number(options[key], float, key)
    return args


def _parse_poisson(body: str, seed: int) -> Workload:
    return poisson_workload(seed=seed, **_synthetic_args(body, set()))


def _parse_gamma(body: str, seed: int) -> Workload:
    return gamma_workload(seed=seed, **_synthetic_args(body, {"cv"}))


register_workload_kind("trace", _parse_trace)
register_workload_kind("poisson", _parse_poisson)
register_workload_kind("gamma", _parse_gamma)
