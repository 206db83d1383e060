"""Training: a few steps on tiny synthetic cases must lower the loss and give a checkpoint that
the network segmenter loads and that segments unseen cases far better than trivial masks."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from isles_pipeline.inputs import MANIFEST, CaseFile, CaseManifest
from isles_pipeline.segment.checkpoints import read_sidecar
from isles_pipeline.segment.network import NetworkSegmenter
from isles_pipeline.store import CaseStore
from isles_pipeline.train import TrainConfig, TrainingCase, save_loss_plot, train_segmenter
from isles_pipeline.train.training import prepare_case, sample_patch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACING = (1.5, 1.5, 3.0)
CONFIG = TrainConfig(
    epochs=20,
    steps_per_epoch=6,
    batch_size=4,
    patch_size=(16, 16, 16),
    init_filters=8,
    target_spacing=(2.0, 2.0, 2.0),
    learning_rate=1e-2,
    seed=0,
    device="cpu",
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Train single-threaded: on a shared 2-core machine, two OpenMP threads competing with other
    processes ran these few steps 10-20x slower; results then depend on this thread count only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blob_case(case_id: str, seed: int, shape: tuple[int, int, int] = (32, 32, 16)) -> TrainingCase:
    """Noisy tissue with one or two round lesions (DWI bright, ADC dark) at random places."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*SPACING, 1.0])
    mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING, strict=True)], indexing="ij"), axis=-1)
    fov = np.asarray(shape) * np.asarray(SPACING)
    lesion = np.zeros(shape)
    for _ in range(int(rng.integers(1, 3))):
        centre = rng.uniform(0.25, 0.75, size=3) * fov
        radius = rng.uniform(6.0, 10.0)
        lesion = np.maximum(lesion, np.exp(-((mm - centre) ** 2).sum(-1) / (2 * (radius / 1.5) ** 2)))
    mask = lesion > 0.5
    dwi = 1.0 + 1.2 * lesion + rng.normal(0, 0.12, shape)
    adc = 0.8 - 0.4 * lesion + rng.normal(0, 0.08, shape)
    return TrainingCase(case_id, dwi.astype(np.float32), adc.astype(np.float32), mask, affine)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def trained():
    cases = [blob_case(f"train-{i}", seed=i) for i in range(6)]
    held_out = [blob_case(f"held-{i}", seed=100 + i) for i in range(2)]
    return train_segmenter(cases, held_out, CONFIG), held_out


def test_loss_goes_down(trained) -> None:
    result, _ = trained
    assert len(result.losses) == CONFIG.epochs == result.epochs
    assert all(np.isfinite(result.losses))
    assert np.mean(result.losses[-2:]) < 0.7 * np.mean(result.losses[:2])


def test_checkpoint_segments_held_out_cases_better_than_trivial_masks(trained, tmp_path: Path) -> None:
    result, held_out = trained
    path = tmp_path / "model.ts"
    path.write_bytes(result.checkpoint_bytes())
    segmenter = NetworkSegmenter(path, device="cpu", target_spacing=CONFIG.target_spacing, roi_size=CONFIG.patch_size)
    rng = np.random.default_rng(0)
    for case in held_out:
        prediction = segmenter.segment(case.dwi, case.adc, case.affine)
        # All-zeros scores 0; a random mask with the true lesion fraction scores about that fraction.
        random_mask = rng.random(case.mask.shape) < case.mask.mean()
        assert dice(prediction, case.mask) > 0.4 > 3 * dice(random_mask, case.mask)
        # The file on disk is the module whose Dice training reported (up to sliding-window overlap).
        assert dice(prediction, case.mask) == pytest.approx(result.held_out_dice[case.case_id], abs=0.05)
    assert result.mean_held_out_dice == pytest.approx(np.mean(list(result.held_out_dice.values())))


def test_training_is_deterministic_for_a_seed() -> None:
    cases = [blob_case("a", seed=1), blob_case("b", seed=2)]
    short = TrainConfig(**{**CONFIG.__dict__, "epochs": 2, "steps_per_epoch": 2})
    first, second = train_segmenter(cases, [], short), train_segmenter(cases, [], short)
    assert first.losses == second.losses
    assert np.isnan(first.mean_held_out_dice)


def test_positive_patches_contain_lesion_and_stay_inside_the_volume() -> None:
    case = prepare_case(blob_case("p", seed=3), CONFIG, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, label = sample_patch(case, CONFIG.patch_size, positive=True, rng=rng)
        assert image.shape == (2, 16, 16, 16) and label.shape == (1, 16, 16, 16)
        assert label.sum() > 0


def test_small_volumes_are_padded_to_one_patch() -> None:
    case = prepare_case(blob_case("s", seed=4, shape=(8, 8, 4)), CONFIG, torch.device("cpu"))
    assert tuple(case.image.shape) == (2, 16, 16, 16)


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        TrainConfig(patch_size=(20, 16, 16))
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(arch="ResNet")


def test_dynunet_trains_and_exports() -> None:
    config = TrainConfig(**{**CONFIG.__dict__, "arch": "DynUNet", "epochs": 1, "steps_per_epoch": 1})
    result = train_segmenter([blob_case("d", seed=5)], [], config)
    with torch.no_grad():
        assert result.module(torch.zeros(1, 2, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


def test_loss_plot_is_a_png() -> None:
    png = save_loss_plot([1.0, 0.7, 0.5])
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def write_case_inputs(store: CaseStore, case: TrainingCase) -> None:
    """What ``case_inputs`` leaves in the store for one case: the images and ``source.json``.
    The files are named ``<column>.nii`` here (not ``.nii.gz``): training must take the names
    from the manifest, not assume them."""
    files = {}
    for column, data in (("dwi", case.dwi), ("adc", case.adc), ("lesion_mask", case.mask.astype(np.uint8))):
        image = nib.Nifti1Image(data, case.affine)
        raw = image.to_bytes()
        sha = store.write_bytes(store.case_path(case.case_id, f"{column}.nii"), raw)
        files[column] = CaseFile(f"{column}.nii", sha, len(raw))
    manifest = CaseManifest(
        case_id=case.case_id, repo_id="test/repo", revision="main", shard_path="-", shard_oid="-", shard_size=0,
        files=files, original_names={}, shape=case.dwi.shape, voxel_size_mm=SPACING, lesion_ml=0.0,
    )
    store.write_text(store.case_path(case.case_id, MANIFEST), manifest.to_json())


def test_segmenter_checkpoint_asset_trains_writes_and_reports(tmp_path: Path) -> None:
    import dagster as dg

    from isles_pipeline.defs.resources import CaseStoreResource
    from isles_pipeline.defs.training import segmenter_checkpoint

    store = CaseStore(tmp_path / "data")
    cases = {f"sub-{i}": blob_case(f"sub-{i}", seed=i) for i in range(3)}
    for case in cases.values():
        write_case_inputs(store, case)
    config = {"train_case_ids": ["sub-0", "sub-1"], "held_out_case_ids": ["sub-2"], "epochs": 2, "steps_per_epoch": 2,
              "batch_size": 2, "patch_size": [16, 16, 16], "init_filters": 8, "target_spacing": [2.0, 2.0, 2.0], "device": "cpu"}

    result = dg.materialize(
        [segmenter_checkpoint],
        resources={"case_store": CaseStoreResource(data_dir=str(store.root))},
        run_config={"ops": {"segmenter_checkpoint": {"config": config}}},
    )

    assert result.success
    metadata = result.asset_materializations_for_node("segmenter_checkpoint")[0].metadata
    checkpoint = store.path("models", "segmenter_checkpoint", "model.ts")
    assert metadata["checkpoint_path"].value == str(checkpoint)
    assert metadata["checkpoint_sha256"].value == store.sha256(checkpoint)
    assert metadata["epochs"].value == 2 and metadata["train_case_ids"].value == ["sub-0", "sub-1"]
    assert set(metadata["held_out_dice"].value) == {"sub-2"}
    assert metadata["held_out_dice_mean"].value == pytest.approx(metadata["held_out_dice"].value["sub-2"])
    assert "data:image/png;base64," in metadata["loss_curve"].value
    assert store.path("models", "segmenter_checkpoint", "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert list(store.leftovers()) == []
    # The sidecar beside model.ts says how to run it: the training spacing, the patch as ROI.
    assert read_sidecar(checkpoint) == {"target_spacing": [2.0, 2.0, 2.0], "roi_size": [16, 16, 16], "overlap": 0.5, "size_divisible": 8}
    assert metadata["held_out_chance_dice"].value == pytest.approx(cases["sub-2"].mask.mean())
    # The checkpoint alone, without options, runs as training scored it and reproduces its Dice.
    held = cases["sub-2"]
    segmenter = NetworkSegmenter(str(checkpoint), device="cpu")
    prediction = segmenter.segment(held.dwi, held.adc, held.affine)
    assert segmenter.last_info["target_spacing"] == (2.0, 2.0, 2.0) and segmenter.last_info["roi_size"] == (16, 16, 16)
    assert prediction.shape == held.mask.shape
    assert dice(prediction, held.mask) == pytest.approx(metadata["held_out_dice"].value["sub-2"], abs=1e-6)


def test_segmenter_checkpoint_asset_fails_clearly_without_case_inputs(tmp_path: Path) -> None:
    import dagster as dg

    from isles_pipeline.defs.resources import CaseStoreResource
    from isles_pipeline.defs.training import segmenter_checkpoint

    result = dg.materialize(
        [segmenter_checkpoint],
        resources={"case_store": CaseStoreResource(data_dir=str(tmp_path))},
        run_config={"ops": {"segmenter_checkpoint": {"config": {"train_case_ids": ["sub-9"], "device": "cpu"}}}},
        raise_on_error=False,
    )

    assert not result.success
    failure = result.failure_data_for_node("segmenter_checkpoint").error.message
    assert "case sub-9: stored inputs missing in" in failure and "materialise case_inputs for sub-9 first" in failure


def test_kfold_splits_are_by_case_without_leakage() -> None:
    from isles_pipeline.train.training import kfold_splits

    ids = [f"sub-{i}" for i in range(11)]
    splits = kfold_splits(ids, 5, seed=3)
    assert len(splits) == 5 and kfold_splits(ids, 5, seed=3) == splits
    validated = [case for _, validation in splits for case in validation]
    assert sorted(validated) == sorted(ids)  # every case validated exactly once
    for training, validation in splits:
        assert not set(training) & set(validation) and sorted(training + validation) == sorted(ids)
        assert len(validation) in (2, 3)
    with pytest.raises(ValueError, match="repeat"):
        kfold_splits(["a", "b", "a"], 2)


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 4, "steps_per_epoch": 5, "warmup_epochs": 1, "learning_rate": 0.1})
    model = torch.nn.Linear(2, 2)
    optimiser = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    from isles_pipeline.train.training import learning_rate_schedule

    schedule = learning_rate_schedule(optimiser, config)
    rates = []
    for _ in range(20):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        schedule.step()
    expected_warmup = [0.1 * (0.01 + 0.99 * k / 5) for k in range(5)]
    np.testing.assert_allclose(rates[:5], expected_warmup, rtol=1e-6)
    floor = 0.001
    expected_cosine = [floor + (0.1 - floor) * (1 + math.cos(math.pi * k / 15)) / 2 for k in range(15)]
    np.testing.assert_allclose(rates[5:], expected_cosine, rtol=1e-6)


def test_augmentation_is_monai_and_seeded() -> None:
    from isles_pipeline.train.training import PatchSampler

    case = prepare_case(blob_case("a", seed=5), CONFIG, torch.device("cpu"))
    plain = PatchSampler(TrainConfig(**{**CONFIG.__dict__, "augment": False}), 7, torch.device("cpu"))
    first, again = (PatchSampler(CONFIG, 7, torch.device("cpu")) for _ in range(2))
    patches = [first(case) for _ in range(6)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(patches, (again(case) for _ in range(6)), strict=True))
    plain_patches = [plain(case) for _ in range(6)]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(patches, plain_patches, strict=True))
    for image, label in patches:
        assert image.shape == (2, 16, 16, 16) and set(torch.unique(label).tolist()) <= {0.0, 1.0}


def test_validation_picks_and_exports_the_best_epoch() -> None:
    cases = [blob_case(f"t-{i}", seed=20 + i) for i in range(4)]
    validation = [blob_case("v-0", seed=40)]
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 6, "steps_per_epoch": 3, "validate_every": 2})
    result = train_segmenter(cases, [], config, validation=validation)
    assert sorted(result.validation_dice) == [2, 4, 6]
    best = max(result.validation_dice, key=result.validation_dice.get)
    assert result.best_epoch == best and result.validation_case_ids == ["v-0"]
    # The exported module is the best epoch's: run through the segmenter it scores that Dice again.
    segmenter = NetworkSegmenter([result.module], device="cpu", sw_batch_size=config.batch_size, **result.inference)
    v = validation[0]
    assert dice(segmenter.segment(v.dwi, v.adc, v.affine), v.mask) == pytest.approx(result.validation_dice[best], abs=1e-9)
    with pytest.raises(ValueError, match="more than one of training, validation and held-out"):
        train_segmenter(cases, [], config, validation=[cases[0]])


def test_the_asset_trains_one_fold_with_disjoint_case_sets(tmp_path: Path) -> None:
    import dagster as dg

    from isles_pipeline.defs.resources import CaseStoreResource
    from isles_pipeline.defs.training import segmenter_checkpoint
    from isles_pipeline.train.training import kfold_splits

    store = CaseStore(tmp_path / "data")
    ids = [f"sub-{i}" for i in range(5)]
    for i, case_id in enumerate(ids):
        write_case_inputs(store, blob_case(case_id, seed=60 + i))
    config = {"train_case_ids": ids[:4], "held_out_case_ids": ids[4:], "folds": 2, "fold": 1, "epochs": 2, "steps_per_epoch": 1,
              "batch_size": 2, "patch_size": [16, 16, 16], "init_filters": 8, "target_spacing": [2.0, 2.0, 2.0], "device": "cpu"}
    result = dg.materialize([segmenter_checkpoint], resources={"case_store": CaseStoreResource(data_dir=str(store.root))},
                            run_config={"ops": {"segmenter_checkpoint": {"config": config}}})
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("segmenter_checkpoint")[0].metadata.items()}
    train, validation, held_out = metadata["train_case_ids"], metadata["validation_case_ids"], list(metadata["held_out_dice"])
    assert (train, validation) == tuple(kfold_splits(ids[:4], 2, seed=0)[1])
    assert len(train) == len(validation) == 2 and held_out == ["sub-4"]
    assert not (set(train) & set(validation) or set(train) & set(held_out) or set(validation) & set(held_out))
    assert sorted(metadata["validation_dice"]) == ["1", "2"] and metadata["best_epoch"] in (1, 2)

    leaky = {**config, "folds": 0, "validation_case_ids": ["sub-0"]}
    failed = dg.materialize([segmenter_checkpoint], resources={"case_store": CaseStoreResource(data_dir=str(store.root))},
                            run_config={"ops": {"segmenter_checkpoint": {"config": leaky}}}, raise_on_error=False)
    assert not failed.success
