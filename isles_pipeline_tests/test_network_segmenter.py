"""The network segmenter: checkpoint files, the NVAUTO inference path and the ensemble.

Networks here are ORACLES: tiny TorchScript modules whose logits are a known function of the
z-scored [ADC, DWI] channels, so the mask the whole path (resample -> z-score -> sliding window
-> average -> resample back -> argmax) must produce can be computed directly on the input grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError
from monai.networks.nets import SegResNet

from isles_pipeline.segment.base import Segmenter
from isles_pipeline.segment.checkpoints import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint_files,
    state_dict_checkpoint_bytes,
    torchscript_bytes,
)
from isles_pipeline.segment.hub_models import parse_hub_spec
from isles_pipeline.segment.network import NVAUTO, InferenceSettings, NetworkSegmenter, network_input
from isles_pipeline.segment.registry import make_segmenter
from isles_pipeline.segment.rules import RuleParams, RuleSegmenter

from .conftest import assert_only_known_routes

CPU = torch.device("cpu")


class OracleNet(torch.nn.Module):
    """Lesion logit ``a*(dwi_z - t_dwi) - b*(adc_z - t_adc)``; background logit 0."""

    def __init__(self, a: float = 2.0, t_dwi: float = 1.0, b: float = 1.0, t_adc: float = -0.5):
        super().__init__()
        self.a, self.t_dwi, self.b, self.t_adc = a, t_dwi, b, t_adc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adc, dwi = x[:, 0:1], x[:, 1:2]
        lesion = self.a * (dwi - self.t_dwi) - self.b * (adc - self.t_adc)
        return torch.cat([torch.zeros_like(lesion), lesion], dim=1)


class ConstantNet(torch.nn.Module):
    """The same lesion logit everywhere."""

    def __init__(self, logit: float):
        super().__init__()
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = torch.full_like(x[:, :1], self.logit)
        return torch.cat([torch.zeros_like(lesion), lesion], dim=1)


class OutOfMemoryWithBigBatches(torch.nn.Module):
    """Raises CUDA's out-of-memory error for sliding-window batches of more than one patch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("simulated")
        return OracleNet()(x)


def save_script(module: torch.nn.Module, path: Path) -> Path:
    path.write_bytes(torchscript_bytes(torch.jit.script(module)))
    return path


def zscore_nonzero(volume: np.ndarray) -> np.ndarray:
    inside = volume != 0
    out = np.zeros_like(volume)
    values = volume[inside]
    out[inside] = (values - values.mean()) / values.std()
    return out


def oracle_mask(dwi: np.ndarray, adc: np.ndarray, net: OracleNet) -> np.ndarray:
    dwi_z, adc_z = zscore_nonzero(dwi), zscore_nonzero(adc)
    return net.a * (dwi_z - net.t_dwi) - net.b * (adc_z - net.t_adc) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def oblique_affine(spacing: tuple[float, float, float], degrees: float = 25.0) -> np.ndarray:
    """Voxel -> mm with the given voxel sizes, rotated about two axes (an oblique acquisition)."""
    t = np.deg2rad(degrees)
    rz = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    return affine


def blob_case(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth tissue filling the field of view with two Gaussian lesions, DWI-bright and ADC-dark,
    defined in millimetres so that the blobs are round whatever the voxel grid.

    No hard brain edge: partial-volume voxels at an edge would shift the non-zero z-score
    statistics between grids, which is not what these tests are about."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    mm = idx @ affine[:3, :3].T + affine[:3, 3]
    centre_mm = affine[:3, :3] @ (np.asarray(shape, dtype=np.float64) / 2 - 0.5) + affine[:3, 3]
    lesions = sum(
        np.exp(-(((mm - (centre_mm + offset)) ** 2).sum(-1)) / (2 * sigma**2))
        for offset, sigma in (((4.0, 3.0, 0.0), 5.0), ((-7.0, -5.0, 2.0), 3.5))
    )
    texture = 0.1 * np.sin(mm[..., 0] / 7.0) * np.cos(mm[..., 1] / 9.0)
    dwi = 1.0 + texture + 1.5 * lesions
    adc = 1.0 - texture - 0.6 * lesions
    return dwi.astype(np.float32), adc.astype(np.float32)


NET_KWARGS = {"spatial_dims": 3, "in_channels": 2, "out_channels": 2, "init_filters": 4, "norm": ("GROUP", {"num_groups": 4})}


def _save_torchscript(net: torch.nn.Module, folder: Path) -> Path:
    return save_script(net, folder / "model.ts")


def _save_state_dict(net: torch.nn.Module, folder: Path) -> Path:
    path = folder / "fold0.pt"
    path.write_bytes(state_dict_checkpoint_bytes("SegResNet", NET_KWARGS, net.state_dict()))
    return path


@pytest.mark.parametrize(("save", "kind"), [(_save_torchscript, "torchscript"), (_save_state_dict, "state_dict")])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, save, kind: str) -> None:
    torch.manual_seed(0)
    net = SegResNet(**NET_KWARGS).eval()
    loaded = load_checkpoint(save(net, tmp_path), CPU)
    x = torch.randn(1, 2, 16, 16, 8)
    with torch.no_grad():
        assert loaded.kind == kind
        assert torch.equal(loaded.module(x), net(x))


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match="'arch', 'kwargs' and 'state_dict'"):
        load_checkpoint(bare, CPU)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        state_dict_checkpoint_bytes("os.system", {}, {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no"):
        resolve_checkpoint_files(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not a Hub repo id"):
        resolve_checkpoint_files(str(tmp_path / "missing" / "model.ts"))
    with pytest.raises(CheckpointError, match="no such file or folder"):
        resolve_checkpoint_files("models/model.ts")  # a relative path, not the repo "models/model.ts"


def test_local_wildcards_select_checkpoint_files_in_name_order(tmp_path: Path) -> None:
    for name in ("fold1.ts", "fold0.ts", "other.ts", "fold0.json"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in resolve_checkpoint_files(str(tmp_path / "fold*"))] == ["fold0.ts", "fold1.ts"]
    with pytest.raises(CheckpointError, match="no file matches it"):
        resolve_checkpoint_files(str(tmp_path / "nvauto*.ts"))


def test_hub_specs_parse_revision_and_patterns() -> None:
    spec = parse_hub_spec("hf://org/nvauto@v1.2:fold*.ts,extra.pt")
    assert (spec.repo_id, spec.revision, spec.patterns) == ("org/nvauto", "v1.2", ("fold*.ts", "extra.pt"))
    assert parse_hub_spec("org/model") == parse_hub_spec("hf://org/model")
    assert parse_hub_spec("org/model").revision is None and parse_hub_spec("org/model").patterns == ()
    assert parse_hub_spec("/abs/path/model.ts") is None


def test_zscore_uses_nonzero_voxels_per_channel_and_keeps_zeros() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(5.0, 2.0, size=(2, 8, 8, 4)).astype(np.float32)
    volume[:, :3] = 0.0  # background
    volume[1] *= 10  # channels are normalised independently

    # network_input at the grid's own spacing: MONAI's NormalizeIntensity(nonzero, channel_wise) only
    out = network_input(volume[1], volume[0], np.eye(4), (1.0, 1.0, 1.0), torch.device("cpu"))[0].numpy()

    assert np.allclose(out[0], zscore_nonzero(volume[0]), atol=1e-5)
    assert np.allclose(out[1], zscore_nonzero(volume[1]), atol=1e-5)
    assert (out[:, :3] == 0).all() and abs(out[1, 3:].mean()) < 1e-5


def test_oracle_through_resampling_and_sliding_window_matches_direct_mask(tmp_path: Path) -> None:
    """Anisotropic 0.45 x 0.45 x 2 mm oblique grid: resampled to 1 mm, tiled into several windows,
    resampled back; the mask must match the oracle applied directly on the input grid."""
    affine = oblique_affine((0.45, 0.45, 2.0))
    dwi, adc = blob_case((100, 100, 24), affine)
    net = OracleNet()
    expected = oracle_mask(dwi, adc, net)
    segmenter = NetworkSegmenter(save_script(net, tmp_path / "oracle.ts"), device="cpu", roi_size=(24, 24, 24))

    mask = segmenter.segment(dwi, adc, affine)

    assert isinstance(segmenter, Segmenter)
    assert mask.dtype == bool and mask.shape == dwi.shape
    assert expected.sum() > 2000  # the lesions are real, not a few voxels
    assert dice(mask, expected) >= 0.95
    info = segmenter.last_info
    # MONAI 0.9 Spacing: round((n - 1) s / t) + 1 = round(99 * 0.45) + 1, round(23 * 2) + 1
    assert info["resampled_shape"] == (46, 46, 47)
    assert info["roi_size"] == (24, 24, 24) and info["fallbacks"] == [] and info["device"] == "cpu"


def test_ensemble_averages_softmax_not_logits(tmp_path: Path) -> None:
    """Lesion logits -10, 2, 2: mean probability (0 + 0.88 + 0.88) / 3 = 0.59 is lesion everywhere,
    while two of the three models alone, and the mean logit (-2), say background."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    dwi, adc = blob_case((20, 20, 12), affine)
    paths = [save_script(ConstantNet(v), tmp_path / f"m{i}.ts") for i, v in enumerate((-10.0, 2.0, 2.0))]
    assert not NetworkSegmenter(paths[0], device="cpu").segment(dwi, adc, affine).any()
    # One string as in ISLES_CHECKPOINT; the default ROI 192x192x128 is kept (the inferer pads
    # the 20x20x12 volume up to it, as MONAI's sliding_window_inference does).
    segmenter = NetworkSegmenter.from_spec(";".join(str(p) for p in paths), device="cpu")

    mask = segmenter.segment(dwi, adc, affine)

    assert mask.all()
    assert segmenter.last_info["models"] == 3 and segmenter.last_info["roi_size"] == (192, 192, 128)


def test_ensemble_of_two_oracles_takes_the_averaged_decision(tmp_path: Path) -> None:
    """One model looks at DWI only, one at ADC only; the ensemble decides where their mean lesion
    probability exceeds 1/2, which is neither model's own mask."""
    affine = np.eye(4)
    dwi, adc = blob_case((40, 40, 24), affine)
    dwi_only, adc_only = OracleNet(a=3.0, t_dwi=1.0, b=0.0), OracleNet(a=0.0, b=3.0, t_adc=-1.0)
    folder = tmp_path / "ensemble"
    folder.mkdir()
    save_script(dwi_only, folder / "a.ts")
    save_script(adc_only, folder / "b.ts")

    mask = NetworkSegmenter(folder, device="cpu", roi_size=(16, 16, 16)).segment(dwi, adc, affine)

    dwi_z, adc_z = zscore_nonzero(dwi), zscore_nonzero(adc)
    p_dwi = 1 / (1 + np.exp(-3.0 * (dwi_z - 1.0)))
    p_adc = 1 / (1 + np.exp(3.0 * (adc_z + 1.0)))
    expected = (p_dwi + p_adc) / 2 > 0.5
    alone_dwi, alone_adc = p_dwi > 0.5, p_adc > 0.5
    assert (expected != alone_dwi).sum() > 50 and (expected != alone_adc).sum() > 50
    assert (mask != expected).sum() <= 0.001 * mask.size  # only float ties at the boundary


def test_out_of_memory_retries_with_batch_one_and_records_it() -> None:
    affine = np.eye(4)
    dwi, adc = blob_case((32, 32, 16), affine)
    segmenter = NetworkSegmenter([OutOfMemoryWithBigBatches()], device="cpu", roi_size=(16, 16, 16), sw_batch_size=4)

    mask = segmenter.segment(dwi, adc, affine)

    assert np.array_equal(mask, oracle_mask(dwi, adc, OracleNet()))
    assert segmenter.last_info["sw_batch_size"] == 1
    assert segmenter.last_info["fallbacks"] == ["out of memory on cpu with sw_batch_size=4"]


class AlwaysOutOfMemory(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("simulated")


def test_out_of_memory_in_every_attempt_raises_with_the_attempts_listed() -> None:
    dwi, adc = blob_case((16, 16, 8), np.eye(4))
    segmenter = NetworkSegmenter([AlwaysOutOfMemory()], device="cpu", sw_batch_size=2)
    with pytest.raises(torch.OutOfMemoryError, match="sw_batch_size=2; out of memory on cpu with sw_batch_size=1"):
        segmenter.segment(dwi, adc, np.eye(4))


def test_cuda_falls_back_to_batch_one_then_to_the_cpu() -> None:
    segmenter = NetworkSegmenter([OracleNet()], device="cpu", sw_batch_size=2)
    segmenter.device = torch.device("cuda")  # the plan only; this machine may have no GPU
    assert segmenter._attempts() == [(torch.device("cuda"), 2), (torch.device("cuda"), 1), (CPU, 1)]


def test_models_are_loaded_once_per_segmenter(tmp_path: Path) -> None:
    path = save_script(OracleNet(), tmp_path / "oracle.ts")
    segmenter = NetworkSegmenter(path, device="cpu")
    dwi, adc = blob_case((16, 16, 8), np.eye(4))
    segmenter.segment(dwi, adc, np.eye(4))
    first = segmenter.load()[0].module
    segmenter.segment(dwi, adc, np.eye(4))
    assert segmenter.load()[0].module is first


def test_checkpoints_download_from_a_local_hub_model_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isles_pipeline.hub.server import HubServer

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    save_script(OracleNet(), repo / "fold0.ts")
    save_script(ConstantNet(-5.0), repo / "fold1.ts")
    (repo / "README.md").write_text("tiny oracle models\n")
    affine = np.eye(4)
    dwi, adc = blob_case((24, 24, 12), affine)

    with HubServer("127.0.0.1") as server:
        server.add_repo("model", "lab/oracle", repo)
        all_files = resolve_checkpoint_files("lab/oracle", endpoint=server.url)
        one = NetworkSegmenter("hf://lab/oracle:fold0.ts", device="cpu", endpoint=server.url)
        mask = one.segment(dwi, adc, affine)
        with pytest.raises(CheckpointError, match="'lab/oracle' has no file fold7.ts"):
            resolve_checkpoint_files("lab/oracle:fold7.ts", endpoint=server.url)
    assert_only_known_routes(server)

    assert sorted(p.name for p in all_files) == ["fold0.ts", "fold1.ts"]
    assert [Path(m.source).name for m in one.load()] == ["fold0.ts"]
    assert np.array_equal(mask, oracle_mask(dwi, adc, OracleNet()))
    downloaded = [r.path.rsplit("/", 1)[-1] for r in server.stats.log if r.route_kind == "resolve" and r.method == "GET"]
    assert sorted(downloaded) == ["fold0.ts", "fold1.ts"]  # README.md stays on the server; fold0.ts came from the cache
    assert server.stats.requests_by_route["repo_info"] == 3  # one per spec: revision resolved to a commit


def test_a_model_download_retries_each_hub_call_in_one_layer(tmp_path: Path) -> None:
    """A 503 burst on every route a model download calls is ridden out; a 503 that lasts ends after
    the attempts of one layer (repo info: the pipeline's 4; the others: the client's), never their product."""
    from isles_pipeline.hub.server import HubServer

    repo = tmp_path / "repo"
    repo.mkdir()
    save_script(OracleNet(), repo / "fold0.ts")
    with HubServer("127.0.0.1", faults=True) as server:
        server.add_repo("model", "lab/flaky", repo)
        for route in ("repo_info", "tree", "resolve"):
            server.faults.add(route, "status", times=2, status=503)
        (path,) = resolve_checkpoint_files("lab/flaky", endpoint=server.url)
        assert path.read_bytes() == (repo / "fold0.ts").read_bytes()
        statuses = {route: [r.status for r in server.stats.log if r.route_kind == route] for route in ("repo_info", "tree", "resolve")}
        assert {route: s.count(503) for route, s in statuses.items()} == {"repo_info": 2, "tree": 2, "resolve": 2}
        assert all(s[-1] == 200 for s in statuses.values())

        server.reset_stats()
        server.faults.add("repo_info", "status", times=50, status=503)
        with pytest.raises(HfHubHTTPError, match="503"):
            resolve_checkpoint_files("lab/flaky@v2", endpoint=server.url)
        assert server.stats.requests_by_route["repo_info"] == 4
    assert_only_known_routes(server)


def write_sidecar(checkpoint: Path, **settings: object) -> Path:
    path = checkpoint.with_suffix(".json")
    path.write_text(json.dumps({**settings, "channels": ["adc", "dwi"], "arch": "oracle"}))
    return path


def test_a_checkpoint_sidecar_sets_the_options_not_given_explicitly(tmp_path: Path) -> None:
    checkpoint = save_script(OracleNet(), tmp_path / "model.ts")
    write_sidecar(checkpoint, target_spacing=[2, 2, 2], roi_size=[8, 8, 8], overlap=0.25, size_divisible=8)
    dwi, adc = blob_case((40, 40, 24), np.eye(4))

    from_sidecar = NetworkSegmenter(str(checkpoint), device="cpu")
    from_sidecar.segment(dwi, adc, np.eye(4))
    explicit = NetworkSegmenter(str(checkpoint), device="cpu", target_spacing=(4.0, 4.0, 4.0))
    explicit.segment(dwi, adc, np.eye(4))

    assert from_sidecar.settings == InferenceSettings((2.0, 2.0, 2.0), (8, 8, 8), 0.25, 8)
    info = from_sidecar.last_info
    assert (info["resampled_shape"], info["roi_size"], info["overlap"]) == ((20, 20, 12), (8, 8, 8), 0.25)
    # The explicit spacing wins; the ROI and overlap still come from the sidecar.
    assert explicit.settings == InferenceSettings((4.0, 4.0, 4.0), (8, 8, 8), 0.25, 8)
    assert explicit.last_info["resampled_shape"] == (11, 11, 7)  # round(39 / 4) + 1, round(23 / 4) + 1


def test_without_a_sidecar_the_nvauto_recipe_applies(tmp_path: Path) -> None:
    segmenter = NetworkSegmenter(save_script(OracleNet(), tmp_path / "fold0.ts"), device="cpu")
    segmenter.load()
    assert segmenter.settings == NVAUTO == InferenceSettings((1.0, 1.0, 1.0), (192, 192, 128), 0.625, 16)


def test_checkpoints_with_conflicting_sidecars_are_refused_unless_the_option_is_explicit(tmp_path: Path) -> None:
    a, b, c = (save_script(OracleNet(), tmp_path / name) for name in ("a.ts", "b.ts", "c.ts"))
    write_sidecar(a, target_spacing=[2, 2, 2])
    write_sidecar(b, target_spacing=[3, 3, 3])
    with pytest.raises(CheckpointError, match=r"disagree on target_spacing .*a\.ts: \(2\.0, 2\.0, 2\.0\).*b\.ts: \(3\.0, 3\.0, 3\.0\)"):
        NetworkSegmenter([a, b], device="cpu").load()
    # c has no sidecar: it stands for NVAUTO's 1 mm, which a's 2 mm contradicts.
    with pytest.raises(CheckpointError, match=r"c\.ts: \(1\.0, 1\.0, 1\.0\)"):
        NetworkSegmenter([a, c], device="cpu").load()
    settled = NetworkSegmenter([a, b, c], device="cpu", target_spacing=(2.5, 2.5, 2.5))
    assert len(settled.load()) == 3 and settled.settings.target_spacing == (2.5, 2.5, 2.5)
    # Sidecars that agree are fine, and options none of them sets keep the NVAUTO values.
    write_sidecar(b, target_spacing=[2.0, 2.0, 2.0])
    agreed = NetworkSegmenter([a, b], device="cpu")
    agreed.load()
    assert agreed.settings == InferenceSettings((2.0, 2.0, 2.0), NVAUTO.roi_size, NVAUTO.overlap, NVAUTO.size_divisible)


def test_bad_sidecars_and_options_fail_clearly(tmp_path: Path) -> None:
    checkpoint = save_script(OracleNet(), tmp_path / "model.ts")
    checkpoint.with_suffix(".json").write_text(json.dumps({"channels": ["dwi", "adc"]}))
    with pytest.raises(CheckpointError, match=r"channels \['dwi', 'adc'\] are not supported"):
        NetworkSegmenter(checkpoint, device="cpu").load()
    write_sidecar(checkpoint, roi_size=[16, 16])
    with pytest.raises(CheckpointError, match="model.ts: invalid sidecar settings .*three values"):
        NetworkSegmenter(checkpoint, device="cpu").load()
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\), got 1.5"):
        NetworkSegmenter(checkpoint, device="cpu", overlap=1.5)


def test_make_segmenter_passes_each_segmenter_its_own_options_and_refuses_others(tmp_path: Path) -> None:
    checkpoint = save_script(OracleNet(), tmp_path / "model.ts")
    options = {"target_spacing": [3.0, 3.0, 3.0], "roi_size": [16, 16, 16], "sw_batch_size": 1, "amp": False}
    network = make_segmenter("network", device="cpu", checkpoint=str(checkpoint), **options)
    network.load()
    assert network.settings.target_spacing == (3.0, 3.0, 3.0) and network.sw_batch_size == 1 and network.amp is False
    rules = make_segmenter("rules", device="cpu", dwi_factor=1.6)
    assert isinstance(rules, RuleSegmenter) and rules.params == RuleParams(dwi_factor=1.6)
    with pytest.raises(ValueError, match="option amp: unknown to the rules segmenter; its options: adc_low, "):
        make_segmenter("rules", device="cpu", **options)  # an option that would do nothing is refused


def test_hub_specs_download_the_sidecar_with_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isles_pipeline.hub.server import HubServer

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    repo = tmp_path / "repo"
    repo.mkdir()
    write_sidecar(save_script(OracleNet(), repo / "model.ts"), target_spacing=[2, 2, 2], roi_size=[16, 16, 8])
    save_script(ConstantNet(-5.0), repo / "other.pt")  # not asked for below; its missing sidecar must not matter

    with HubServer("127.0.0.1") as server:
        server.add_repo("model", "lab/net", repo)
        by_wildcard = NetworkSegmenter("lab/net:*.ts", device="cpu", endpoint=server.url)  # no hf:// needed with patterns
        by_name = NetworkSegmenter("hf://lab/net:model.ts", device="cpu", endpoint=server.url)
        models = by_wildcard.load() + by_name.load()
    assert_only_known_routes(server)

    assert [Path(m.source).name for m in models] == ["model.ts", "model.ts"]
    assert all(Path(m.source).with_suffix(".json").is_file() for m in models)
    expected = InferenceSettings((2.0, 2.0, 2.0), (16, 16, 8), NVAUTO.overlap, NVAUTO.size_divisible)
    assert by_wildcard.settings == by_name.settings == expected
