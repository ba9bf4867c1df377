import pytest

from bench.planning.grid import DTYPES, Config, GridError, get_grid, parse_set
from bench.planning.plan import Request, new_plan


def test_unknown_grid_lists_the_known_ones():
    with pytest.raises(GridError, match=r"^unknown grid 'defualt'; known: default, full, smoke$"):
        get_grid("defualt", on_gpu=True)


def test_gpu_default_covers_every_dtype_layout_and_loader_variant():
    cells = get_grid("default", on_gpu=True).cells("cuda:0")
    batch_sizes = sorted({c.batch_size for c in cells})
    assert batch_sizes[0] == 64 and batch_sizes[-1] == 65536
    assert {(c.dtype, c.channels_last) for c in cells} == {
        (d, cl) for d in ("float32", "bfloat16", "float16") for cl in (False, True)}
    host = {(c.pin_memory, c.num_workers) for c in cells if c.placement == "host"}
    assert host == {(False, 0), (True, 0), (False, 4), (True, 4)}
    assert {c.mode for c in cells} == {"eager", "compile", "compile-cudagraphs", "graph"}
    fast = {(c.dtype, c.mode) for c in cells if c.mode != "eager"}
    assert fast == {(d, m) for d in ("float32", "bfloat16")
                    for m in ("compile", "compile-cudagraphs", "graph")}
    # several LeNets at once at batch 4,096: 4 and 16, stacked, on streams and stacked in a graph
    several = {(c.replicas, c.replica_method, c.mode) for c in cells if c.replicas > 1}
    assert several == {(k, method, mode) for k in (4, 16) for method, mode in (
        ("vmap", "eager"), ("streams", "eager"), ("vmap", "graph"))}
    # 5 batch sizes x (3 dtypes x 2 layouts on the device + 4 loader variants on the host
    # + 2 dtypes x 3 modes), batch 65,536 eager and graphed, and the 6 of several models
    assert len(cells) == 5 * (6 + 4 + 6) + 2 + 6
    assert len(set(cells)) == len(cells)


def test_the_cpu_grids_run_the_modes_that_fit_the_cpu():
    for name in ("default", "full"):
        grid = get_grid(name, on_gpu=False)
        assert {c.mode for c in grid.cells("cpu")} == {"eager", "compile"}
        assert grid.skipped("cpu") == {}


def test_the_cpu_default_grid_times_float16_at_one_batch_size_and_says_why():
    """CPU autocast to float16 runs a step about 20 times slower than float32: one batch size
    tells that."""
    grid = get_grid("default", on_gpu=False)
    eager = [c for c in grid.cells("cpu") if c.mode == "eager" and c.placement == "device"]
    by_dtype = {d: sorted({c.batch_size for c in eager if c.dtype == d}) for d in DTYPES}
    assert by_dtype == {"float32": [64, 256, 1024], "bfloat16": [64, 256, 1024],
                        "float16": [256]}
    assert {c.channels_last for c in eager if c.dtype == "float16"} == {False, True}
    assert "float16 at batch 256 alone (CPU autocast runs it about 20x slower)" in \
        grid.description


def test_a_mode_the_device_cannot_run_is_skipped_with_the_reason():
    grid = get_grid("smoke", on_gpu=False, overrides={"mode": ("eager", "compile-cudagraphs"),
                                                      "placement": ("device",)})
    assert [c.key() for c in grid.cells("cpu")] == ["b64-float32-nchw-device",
                                                    "b256-float32-nchw-device"]
    reason = "mode compile-cudagraphs needs a CUDA device"
    assert grid.skipped("cpu") == {"b64-float32-nchw-device-compile-cudagraphs": reason,
                                   "b256-float32-nchw-device-compile-cudagraphs": reason}
    fp16 = get_grid("smoke", on_gpu=True, overrides={"mode": ("graph",), "dtype": ("float16",),
                                                      "placement": ("device",)})
    assert fp16.cells("cuda:0") == []
    assert set(fp16.skipped("cuda:0").values()) == {
        "mode graph cannot train float16: its GradScaler checks for infinities on the host each "
        "step, which a CUDA graph cannot capture"}


def test_settings_without_effect_are_not_run_twice():
    grid = get_grid("smoke", on_gpu=True, overrides={"pin_memory": (False, True),
                                                     "num_workers": (0, 2)})
    cells = grid.cells("cuda:0")
    device_cells = [c for c in cells if c.placement == "device"]
    # pinning and workers mean nothing when the data already lives on the device
    assert device_cells == [Config(256, device="cuda:0"), Config(1024, device="cuda:0")]
    assert len(cells) == 2 + 2 * 4


def test_pinning_collapses_without_cuda():
    cells = get_grid("smoke", on_gpu=False, overrides={"pin_memory": (False, True)}).cells("cpu")
    assert not any(c.pin_memory for c in cells)
    assert len(cells) == 4


def test_set_overrides_an_axis_in_every_block():
    overrides = parse_set(["batch_size=32,32,128", "dtype=bfloat16", "channels-last=true"])
    assert overrides == {"batch_size": (32, 128), "dtype": ("bfloat16",),
                         "channels_last": (True,)}
    cells = get_grid("default", on_gpu=False, overrides=overrides).cells("cpu")
    assert {c.batch_size for c in cells} == {32, 128}
    assert {c.dtype for c in cells} == {"bfloat16"}


@pytest.mark.parametrize("item, message", [
    ("colour=red", r"--set: unknown axis 'colour'; axes: batch_size, dtype, channels_last, "
                   r"placement, pin_memory, num_workers, mode"),
    ("mode=jit", r"--set mode: 'jit' is not valid; valid: eager, compile, compile-cudagraphs, "
                 r"graph"),
    ("dtype=float64", r"--set dtype: 'float64' is not valid; valid: float32, bfloat16, float16"),
    ("batch_size=0", r"--set batch_size: '0' is not a batch size; it must be a whole number, "
                     r"1 or more"),
    ("batch_size=-4", r"'-4' is not a batch size"),
    ("pin_memory=maybe", r"--set pin_memory: 'maybe' is not true or false"),
    ("placement", r"write it as axis=v1,v2"),
])
def test_bad_set_items_say_what_is_valid(item, message):
    with pytest.raises(GridError, match=message):
        parse_set([item])


def test_cell_keys_are_stable_names():
    assert Config(256).key() == "b256-float32-nchw-device"
    assert Config(64, "float16", True, "host", True, 4, "cuda:0").key() == \
        "b64-float16-nhwc-host-w4-pinned"
    # an axis added later joins the key only away from its default, so old keys still match
    assert Config(256, mode="graph").key() == "b256-float32-nchw-device-graph"
    assert Config(256, mode="graph").boundary_key() == "float32-nchw-graph"


def test_precision_and_the_optimizer_are_axes_and_tf32_skips_the_cpu_with_the_reason():
    grid = get_grid("smoke", on_gpu=False, overrides={
        "batch_size": (64,), "placement": ("device",), "precision": ("default", "tf32"),
        "optimizer": ("default", "fused", "loop")})
    assert [c.key() for c in grid.cells("cpu")] == [
        "b64-float32-nchw-device", "b64-float32-nchw-device-fused", "b64-float32-nchw-device-loop"]
    assert set(grid.skipped("cpu").values()) == {
        "precision tf32 sets NVIDIA's TF32 tensor-core math, which the CPU does not have"}
    on_gpu = get_grid("smoke", on_gpu=True, overrides={
        "batch_size": (64,), "placement": ("device",), "precision": ("highest", "tf32")})
    assert [c.key() for c in on_gpu.cells("cuda:0")] == [
        "b64-float32-nchw-device-highest", "b64-float32-nchw-device-tf32"]
    assert Config(64, precision="tf32", optimizer="fused").boundary_key() == \
        "float32-nchw-tf32-fused"


def test_replicas_are_an_axis_keyed_by_count_and_method():
    grid = get_grid("smoke", on_gpu=False, overrides={
        "batch_size": (64,), "placement": ("device",), "replicas": (1, 4),
        "replica_method": ("vmap", "streams")})
    # one model is one model by either method: a single cell
    assert [c.key() for c in grid.cells("cpu")] == [
        "b64-float32-nchw-device", "b64-float32-nchw-device-x4",
        "b64-float32-nchw-device-x4-streams"]
    assert Config(64, replicas=4).boundary_key() == "float32-nchw-x4"
    with pytest.raises(GridError, match="'0' is not a replica count"):
        parse_set(["replicas=0"])
    with pytest.raises(GridError, match="valid: vmap, streams"):
        parse_set(["replica_method=processes"])


def test_several_models_get_no_boundary_search_of_their_own():
    from bench.planning.plan import boundary_configs

    cells = [Config(64), Config(64, replicas=4), Config(64, replicas=4, replica_method="streams")]
    assert [c.boundary_key() for c in boundary_configs(cells)] == ["float32-nchw"]


def test_the_cpu_searches_for_the_oom_boundary_only_under_a_memory_cap(no_gpu):
    """Uncapped, the CPU default grid's six searches stopped at their time budget or the batch
    limit, none at an OOM: the host's memory holds a float32 batch of about 285,000."""
    def plan(**asked):
        return new_plan(Request(grid="default", data="synthetic", **asked))

    assert not plan(device="cpu").find_max_batch
    assert plan(device="cpu", memory_cap_bytes=512 * 2**20).find_max_batch
    assert plan(device="cpu", find_max_batch=True).find_max_batch  # asked for, it runs
    assert not plan(device="cpu", memory_cap_bytes=512 * 2**20, find_max_batch=False) \
        .find_max_batch
    assert "the OOM boundary searched under --memory-cap alone" in \
        plan(device="cpu").grid_description
    # a GPU's memory ends the search: it runs uncapped
    assert plan(device="cuda", dry_run=True, memory_cap_bytes=80 * 2**30).find_max_batch
