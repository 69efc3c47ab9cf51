"""Tensor parallelism: the sharded paged forward reproduces one device; per-device page sizing; simulated TP.

The multi-device tests need several JAX devices, which on CPU means ``XLA_FLAGS=
--xla_force_host_platform_device_count=4`` set before JAX starts. They run in a child pytest process
(``test_tensor_parallel_on_four_cpu_devices``) so the flag never leaks into the rest of the suite.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from paged_inputs import NUM_PAGES, PAGE_SIZE, PROMPTS, PagedBatcher, greedy_chunked_run

from odrive.models import LlamaConfig
from odrive.parallel import check_tp, per_device_kv_pages, per_device_weight_bytes

IN_CHILD = os.environ.get("ODRIVE_TP_CHILD") == "1"
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs in the 4-device child process")
parent_only = pytest.mark.skipif(IN_CHILD, reason="runs in the parent process")

CONFIG = LlamaConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=4,
)
TIED = LlamaConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)


# --------------------------------------------------------------------------- one process, no devices needed
@parent_only
def test_per_device_weight_bytes_splits_matmuls_and_replicates_the_rest():
    c = CONFIG
    h, i, n, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    matmuls = n * (2 * h * q + 2 * h * kv + 3 * h * i)
    replicated = v * h + n * 2 * h + h  # embeddings and norms
    assert per_device_weight_bytes(c, 1) == c.num_parameters() * 4
    for tp in (2, 4):
        assert per_device_weight_bytes(c, tp) == 4 * (replicated + (matmuls + h * v) // tp)  # + vocab-parallel head
    t = TIED  # tied embeddings stay whole on every device (they are the LM head too)
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    matmuls = n * (2 * h * q + 2 * h * kv + 3 * h * i)
    assert per_device_weight_bytes(t, 2) == 4 * (replicated + matmuls // 2)
    assert per_device_weight_bytes(t, 2, "bfloat16") * 2 == per_device_weight_bytes(t, 2)


@parent_only
def test_per_device_kv_pages_applies_the_page_formula_to_one_device():
    device, util, ps = 10**8, 0.5, 16
    plans = {
        tp: per_device_kv_pages(CONFIG, tp=tp, page_size=ps, hbm_utilization=util, max_running=10**6,
                                max_model_len=10**6, device_bytes=device)
        for tp in (1, 2, 4)
    }  # fmt: skip
    for tp, plan in plans.items():
        page_bytes = CONFIG.kv_bytes_per_token() * ps // tp
        assert plan.page_bytes == page_bytes
        assert plan.pages_fit == math.floor((device * util - per_device_weight_bytes(CONFIG, tp)) / page_bytes)
    # Per-device pages grow at least tp-fold: page bytes shrink by tp and weights shrink too.
    assert plans[2].pages_fit >= 2 * plans[1].pages_fit
    assert plans[4].pages_fit >= 4 * plans[1].pages_fit


@parent_only
def test_check_tp_names_what_does_not_divide():
    check_tp(CONFIG, 4)
    with pytest.raises(ValueError, match="num_key_value_heads=4"):
        check_tp(CONFIG, 8)
    with pytest.raises(ValueError, match=">= 1"):
        check_tp(CONFIG, 0)


def _decode_step_times(tp: int, num_seqs: int, kv_tokens: int) -> tuple[float, object]:
    from sim.config import SimConfig
    from sim.latency.batch_shape import BatchShape
    from sim.simulator import build_engine

    config = SimConfig(model="llama-2-7b", accelerator="h100-80gb", latency_kwargs=(("tp", tp),))
    latency = build_engine(config).executor.latency_model
    assert latency.tp == tp
    return latency.step_time(BatchShape.decode_only(num_seqs, kv_tokens)), latency


@parent_only
def test_simulated_tp2_step_time_through_sim_config():
    """``latency_kwargs=(("tp", 2),)`` reaches the roofline: compute and the weight and K/V traffic per device halve
    (32 heads split evenly; the norms and the gathered embedding rows of the new tokens are replicated, as on the
    real engine, so they do not), and two
    all-reduces of the batch's hidden states per layer are added, each latency + ring bytes / bus bandwidth."""
    from sim.latency.batch_shape import BatchShape

    shape = BatchShape.decode_only(64, 64 * 1024)
    t1, lat1 = _decode_step_times(1, 64, 64 * 1024)
    t2, lat2 = _decode_step_times(2, 64, 64 * 1024)
    b1, b2 = lat1.breakdown(shape), lat2.breakdown(shape)
    assert b2["compute_s"] == pytest.approx(b1["compute_s"] / 2, rel=1e-12)
    model = lat1.model
    replicated = (model.decoder.weight_split(1).norms + 64 * model.hidden_size) * model.dtype_bytes
    replicated_s = replicated / lat1._achieved_bandwidth
    assert b2["memory_s"] == pytest.approx((b1["memory_s"] + replicated_s) / 2, rel=1e-12)
    link = lat2.accelerator.link()
    allreduce = link.allreduce_seconds(64 * model.hidden_size * model.dtype_bytes, 2)
    assert b1["comm_s"] == 0.0
    assert b2["comm_s"] == pytest.approx(2 * model.num_layers * allreduce, rel=1e-12)
    expected = max(b2["compute_s"], b2["memory_s"]) + b2["comm_s"] + lat2.accelerator.step_overhead_s
    assert t2 == pytest.approx(expected, rel=1e-12)
    assert t2 < t1  # memory-bound decode: halving the bytes outweighs the all-reduce on NVLink


@parent_only
def test_simulated_tp2_lowers_tpot_of_a_decode_heavy_run():
    from sim.config import SimConfig
    from sim.simulator import simulate
    from sim.workloads import poisson_workload

    workload = poisson_workload(rate=4.0, num_requests=60, prompt_len=256, output_len=256, seed=1)
    tpot = {
        tp: simulate(SimConfig(latency_kwargs=(("tp", tp),), record_steps=False), workload).summary["tpot_p50"]
        for tp in (1, 2)
    }
    assert tpot[2] < 0.75 * tpot[1]


# --------------------------------------------------------------------------- the 4-device child process
@pytest.mark.skipif(IN_CHILD, reason="this is the parent")
@parent_only
def test_tensor_parallel_on_four_cpu_devices():
    env = {
        **os.environ,
        "ODRIVE_TP_CHILD": "1",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip(),
    }
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(Path(__file__).resolve())],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"\b(\d+) passed", out)
    assert passed and int(passed.group(1)) == 12, out[-3000:]  # the device tests ran, not only skipped


@pytest.fixture(scope="module")
def jax_mods():
    import jax
    import jax.numpy as jnp

    if jax.device_count() < 4:
        pytest.fail(f"the child process needs 4 devices, has {jax.device_count()}")
    return jax, jnp


@pytest.fixture(scope="module")
def params(jax_mods):
    from odrive.models import init_params

    jax, _ = jax_mods
    return {CONFIG: init_params(CONFIG, jax.random.key(0)), TIED: init_params(TIED, jax.random.key(1))}


def _mesh(kind: str):
    import jax
    from jax.sharding import Mesh

    from odrive.parallel import make_tp_mesh

    if kind == "data2xmodel2":
        return Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    return make_tp_mesh(int(kind.removeprefix("tp")))


def paged_greedy(forward, params, kv, config, chunk_plan: dict[str, list[int]], num_new: int):
    """Chunked prefill then joint decode of every sequence, greedy; returns tokens and every logits row."""
    pager = PagedBatcher(seed=3)
    rows = []

    def step(chunks):
        nonlocal kv
        logits, kv = forward(params, kv_caches=kv, **pager.build_jax(chunks))
        logits = np.asarray(logits)
        rows.append(logits[: len(chunks)])
        return logits

    out = greedy_chunked_run(step, chunk_plan, num_new)
    return out, rows, kv


@child_only
@pytest.mark.parametrize("mesh_kind", ["tp2", "tp4", "data2xmodel2"])
def test_params_and_kv_pages_are_split_over_the_model_axis(jax_mods, params, mesh_kind):
    from odrive.parallel import allocate_sharded_kv_caches, shard_params, tp_size

    mesh = _mesh(mesh_kind)
    tp = tp_size(mesh)
    sharded = shard_params(params[CONFIG], CONFIG, mesh)
    layers = sharded["layers"]
    assert len(layers) == 2
    for layer in layers:
        local = {k: v.addressable_shards[0].data.shape for k, v in layer.items()}
        q, kv, h = CONFIG.num_attention_heads * CONFIG.head_dim, CONFIG.num_key_value_heads * CONFIG.head_dim, 64
        assert local["wq"] == (h, q // tp) and local["wk"] == (h, kv // tp) and local["wv"] == (h, kv // tp)
        assert local["wo"] == (q // tp, h)
        assert local["w_gate"] == local["w_up"] == (h, 128 // tp) and local["w_down"] == (128 // tp, h)
        assert local["attn_norm"] == (h,)
    assert sharded["embed"].addressable_shards[0].data.shape == (128, h)
    assert sharded["lm_head"].addressable_shards[0].data.shape == (h, 128 // tp)
    k_pool, _ = allocate_sharded_kv_caches(CONFIG, NUM_PAGES, PAGE_SIZE, mesh)
    assert k_pool.shape == (4, 2 * NUM_PAGES, PAGE_SIZE, CONFIG.head_dim)
    assert k_pool.addressable_shards[0].data.shape == (4 // tp, 2 * NUM_PAGES, PAGE_SIZE, CONFIG.head_dim)


@child_only
@pytest.mark.parametrize("config_name", ["gqa", "tied"])
@pytest.mark.parametrize("mesh_kind", ["tp2", "tp4", "data2xmodel2"])
def test_sharded_paged_generation_matches_one_device_and_dense(jax_mods, params, mesh_kind, config_name):
    jax, jnp = jax_mods
    from odrive.models import allocate_kv_caches, dense_greedy_generate, make_paged_forward
    from odrive.parallel import allocate_sharded_kv_caches, make_sharded_paged_forward, shard_params, tp_size

    config = CONFIG if config_name == "gqa" else TIED
    mesh = _mesh(mesh_kind)
    if config.num_key_value_heads % tp_size(mesh):
        pytest.skip("kv heads do not split this far")
    p1 = params[config]
    plan = {"a": [5, 4, 4], "b": [6, 3]}
    one, one_rows, one_kv = paged_greedy(
        make_paged_forward(config), p1, allocate_kv_caches(config, NUM_PAGES, PAGE_SIZE), config, plan, 6
    )
    sharded_forward = make_sharded_paged_forward(config, mesh)
    kv = allocate_sharded_kv_caches(config, NUM_PAGES, PAGE_SIZE, mesh)
    many, many_rows, many_kv = paged_greedy(sharded_forward, shard_params(p1, config, mesh), kv, config, plan, 6)
    for a, b in zip(one_rows, many_rows, strict=True):
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=0)
    for a, b in zip(one_kv, many_kv, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=0)
    assert many_kv[0].sharding.spec[0] == "model"
    assert many == one
    for sid, tokens in many.items():
        assert tokens == dense_greedy_generate(p1, config, PROMPTS[sid], 6)


@child_only
def test_sharded_forward_communicates_only_two_all_reduces_per_layer(jax_mods, params):
    jax, jnp = jax_mods
    from odrive.models import StepBatch
    from odrive.parallel import allocate_sharded_kv_caches, make_sharded_paged_forward, shard_params

    mesh = _mesh("tp4")
    forward = make_sharded_paged_forward(CONFIG, mesh)
    inputs = PagedBatcher(0).build_jax([("a", PROMPTS["a"])])
    kv = allocate_sharded_kv_caches(CONFIG, NUM_PAGES, PAGE_SIZE, mesh)
    sharded = shard_params(params[CONFIG], CONFIG, mesh)
    x = jnp.zeros((inputs["token_ids"].shape[0], CONFIG.hidden_size), jnp.float32)
    batch = StepBatch(*(inputs[name] for name in StepBatch._fields))
    hlo = forward.layer_step.lower(sharded["layers"][0], x, kv, jnp.int32(0), batch).compile().as_text()
    ops = {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo)) for op in ("all-reduce", "all-gather", "all-to-all")}
    assert ops == {"all-reduce": 2, "all-gather": 0, "all-to-all": 0}  # wo and w_down, in every layer step


@child_only
def test_vsurge_tensor_parallel_matches_one_device(jax_mods, params):
    """``create_odriver(tensor_parallel_size=2)``: sharded params, a sharded KV pool sized per device and the
    sharded forward. Greedy output must equal the dense single-device oracle's (which the one-device engine
    matches, tests/test_vsurge_generate.py); the sampler runs on vocab-sharded logits."""
    import numpy as np

    from odrive import SamplingParams, vSurge
    from odrive.models import dense_greedy_generate
    from odrive.models.checkpoint import Model

    model = Model(CONFIG, params[CONFIG], np.dtype("float32"))
    options = dict(
        max_prefill_length=16,
        prefill_lengths=[16],
        page_size=PAGE_SIZE,
        num_pages=NUM_PAGES,
        max_concurrent_prefill=1,
        max_concurrent_decodes=1,
    )  # few shapes: few compiles
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    prompts = [PROMPTS["a"], PROMPTS["b"]]
    surge = vSurge.create_odriver(model, tensor_parallel_size=2, **options)
    ex = surge.executor
    assert ex.mesh is not None and ex.kv_caches[0].sharding.spec[0] == "model"
    many = [r.token_ids for r in surge.generate(prompts, greedy)]
    assert many == [dense_greedy_generate(model.params, CONFIG, p, 6) for p in prompts]  # = one device's output
    assert surge.num_free_pages == surge.num_usable_pages
    plan = vSurge.create_odriver(
        model, tensor_parallel_size=2, **{**options, "num_pages": None, "hbm_utilization": 0.001}
    ).memory_plan
    assert "tp=2" in plan.source


@child_only
def test_vsurge_tensor_parallel_swap_preemption_keeps_the_pool_sharded_and_output_exact(jax_mods, params):
    """Swap preemption on a sharded KV pool: each device's heads of a victim's pages go to host memory and come
    back into other pages; the pool keeps its ``model`` sharding and greedy output equals the dense oracle's."""
    import numpy as np

    from odrive import SamplingParams, vSurge
    from odrive.models import dense_greedy_generate
    from odrive.models.checkpoint import Model

    model = Model(CONFIG, params[CONFIG], np.dtype("float32"))
    # 11 usable pages of 4 tokens; three sequences of 9-13 + 10 tokens need 5-6 pages each: someone is preempted.
    surge = vSurge.create_odriver(
        model, tensor_parallel_size=2, max_prefill_length=16, prefill_lengths=[16], page_size=PAGE_SIZE,
        num_pages=12, max_concurrent_prefill=1, max_concurrent_decodes=3, max_length=32, scheduler="fcfs",
        preemption_mode="swap", swap_space_pages=8, check_invariants=True,
    )  # fmt: skip
    prompts = [PROMPTS["a"], PROMPTS["b"], PROMPTS["b"][::-1]]
    greedy = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    out = [r.token_ids for r in surge.generate(prompts, greedy)]
    stats = surge.engine.swap_stats
    assert stats.requests_out >= 1 and stats.pages_in == stats.pages_out, stats
    assert out == [dense_greedy_generate(model.params, CONFIG, p, 10) for p in prompts]
    k, v = surge.executor.kv_caches
    assert k.sharding.spec[0] == "model" and v.sharding.spec[0] == "model"
    assert len(k.sharding.device_set) == 2
    assert surge.num_free_pages == surge.num_usable_pages and len(surge.executor.host_kv) == 0


@child_only
def test_load_model_onto_a_mesh_places_each_tensor_as_its_shards(jax_mods, params, tmp_path):
    """``load_model(path, mesh=...)`` puts every tensor straight from host memory onto its shards (no device
    ever holds the whole model); values equal a plain load, and ``create_odriver`` from a path uses it."""
    from odrive import SamplingParams, vSurge
    from odrive.models import dense_greedy_generate
    from odrive.models.checkpoint import Model, load_model, save_model
    from odrive.parallel import make_tp_mesh, param_shardings

    jax, _ = jax_mods
    save_model(Model(CONFIG, params[CONFIG], np.dtype("float32")), tmp_path / "ckpt")
    mesh = make_tp_mesh(2)
    sharded = load_model(tmp_path / "ckpt", mesh=mesh)
    plain = load_model(tmp_path / "ckpt")
    want = param_shardings(CONFIG, mesh)
    got_leaves = jax.tree.leaves(sharded.params)
    for leaf, sharding, ref in zip(got_leaves, jax.tree.leaves(want), jax.tree.leaves(plain.params), strict=True):
        assert leaf.sharding == sharding
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref))
    wq = sharded.params["layers"][0]["wq"]
    assert {s.data.shape for s in wq.addressable_shards} == {(wq.shape[0], wq.shape[1] // 2)}
    surge = vSurge.create_odriver(str(tmp_path / "ckpt"), tensor_parallel_size=2, max_prefill_length=16,
                                  prefill_lengths=[16], page_size=PAGE_SIZE, num_pages=NUM_PAGES,
                                  max_concurrent_prefill=1, max_concurrent_decodes=1)  # fmt: skip
    greedy = SamplingParams(max_tokens=4, temperature=0.0)
    out = [r.token_ids for r in surge.generate([PROMPTS["a"]], greedy)]
    assert out == [dense_greedy_generate(plain.params, CONFIG, PROMPTS["a"], 4)]
