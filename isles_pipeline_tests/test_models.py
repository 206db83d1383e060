"""The model registry: parsing, one-line errors naming the model, fingerprints, columns."""

import pytest

from isles_pipeline.models import ModelRegistryError, ModelSpec, load_registry, parse_registry, write_registry
from isles_pipeline.weights import fingerprint


def test_built_in_registry_is_rules_alone(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    registry = load_registry()
    assert registry.names == ["rules"]
    assert registry.input_columns() == ("dwi", "adc", "lesion_mask")


def test_without_a_registry_file_isles_segmenter_names_the_one_model(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    registry = load_registry(segmenter="nnunet", checkpoint=str(tmp_path / "Dataset501_Tiny"))
    assert registry.names == ["nnunet:given"] and registry.get("nnunet:given").checkpoint == str(tmp_path / "Dataset501_Tiny")
    with pytest.raises(ModelRegistryError, match="ISLES_SEGMENTER='nnunet' with ISLES_CHECKPOINT=None and no registry file: expected rules"):
        load_registry(segmenter="nnunet")
    with pytest.raises(ModelRegistryError, match="ISLES_SEGMENTER='rules' with ISLES_CHECKPOINT='x.ts'"):
        load_registry(checkpoint="x.ts")


def test_a_registry_file_and_isles_segmenter_together_are_refused(tmp_path) -> None:
    path = write_registry(tmp_path / "models.yaml", [ModelSpec("rules")])
    with pytest.raises(ModelRegistryError, match=r"is in use: ISLES_SEGMENTER='network' / ISLES_CHECKPOINT='m.ts' would do nothing"):
        load_registry(path, segmenter="network", checkpoint="m.ts")


def test_registry_file_round_trips(tmp_path) -> None:
    models = [ModelSpec("rules"), ModelSpec("network:small", "ckpt/model.ts", {"roi_size": [32, 32, 16]})]
    registry = load_registry(write_registry(tmp_path / "models.yaml", models))
    assert registry.names == ["rules", "network:small"]
    assert registry.get("network:small") == models[1]
    assert registry.get("network:small").slug == "network_small"
    assert registry.get("network:small").segmenter == "network"


def test_fingerprint_follows_the_settings_and_the_weights_not_their_path(tmp_path) -> None:
    a = ModelSpec("rules:a", options={"dwi_factor": 1.5})
    assert fingerprint(a) == fingerprint(ModelSpec("rules:a", options={"dwi_factor": 1.5}, description="other"))
    assert fingerprint(a).value != fingerprint(ModelSpec("rules:a", options={"dwi_factor": 1.6})).value
    assert len(fingerprint(a).value) == 16 and fingerprint(a).weights == ""
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.ts").write_bytes(b"weights v1")
    one, two = (ModelSpec("network:n", str(tmp_path / f / "model.ts")) for f in ("one", "two"))
    assert fingerprint(one) == fingerprint(two)  # the same weights elsewhere: the same model
    before = fingerprint(one)
    (tmp_path / "one" / "model.json").write_text('{"roi_size": [16, 16, 16]}')  # a sidecar decides settings too
    with_sidecar = fingerprint(one)
    (tmp_path / "one" / "model.ts").write_bytes(b"weights v2")  # retrained into the same path
    assert len({before.value, with_sidecar.value, fingerprint(one).value}) == 3
    assert fingerprint(one).weights.startswith("sha256:")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"models": [{"name": "network:big"}]}, "model 'network:big' (<yaml>): a network model needs a checkpoint"),
        ({"models": [{"name": "Network:Big", "checkpoint": "x"}]}, "model 'Network:Big' (<yaml>): name must be"),
        ({"models": [{"name": "rules"}, {"name": "rules"}]}, "model 'rules' (<yaml>): registered twice"),
        ({"models": [{"name": "rules", "chekpoint": "x"}]}, "model 'rules' (<yaml>): unknown key(s) chekpoint"),
        ({"models": [{"name": "rules", "options": [1]}]}, "model 'rules' (<yaml>): options must be a mapping"),
        ({"models": []}, "model registry <yaml>: expected a non-empty list under 'models:'"),
        ({"models": [{"name": "network:a", "checkpoint": "m.ts", "options": {"roi": [96, 96, 64]}}]},
         "model 'network:a' (<yaml>): option roi: unknown to the network segmenter; its options: target_spacing, roi_size"),
        ({"models": [{"name": "network:a", "checkpoint": "m.ts", "options": {"roi_size": [96, 64]}}]},
         "model 'network:a' (<yaml>): option roi_size: List should have at least 3 items"),
        ({"models": [{"name": "network:a", "checkpoint": "m.ts", "options": {"overlap": 1.5}}]},
         "model 'network:a' (<yaml>): option overlap: Input should be less than 1 (got 1.5)"),
        ({"models": [{"name": "nnunet:a", "checkpoint": "f", "options": {"folds": [0, "x"]}}]},
         "model 'nnunet:a' (<yaml>): option folds: "),
        ({"models": [{"name": "nnunet:a", "checkpoint": "f", "options": {"use_mirroring": "no"}}]},
         "model 'nnunet:a' (<yaml>): option use_mirroring: Input should be a valid boolean (got 'no')"),
        ({"models": [{"name": "rules:a", "options": {"adc_low": 0.7}}]}, "model 'rules:a' (<yaml>): need 0 <= adc_low < adc_high"),
        ({"models": [{"name": "rules:a", "checkpoint": "m.ts"}]}, "model 'rules:a' (<yaml>): the rules segmenter reads no checkpoint"),
    ],
)
def test_bad_entries_are_one_line_naming_the_model(document, message) -> None:
    with pytest.raises(ModelRegistryError) as caught:
        parse_registry(document)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_unknown_model_is_named(tmp_path) -> None:
    registry = parse_registry({"models": [{"name": "rules"}]})
    with pytest.raises(ModelRegistryError, match=r"^model 'nnunet:x': not in the registry"):
        registry.get("nnunet:x")


def test_example_registry_parses() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "models.example.yaml"
    assert load_registry(example).names == ["rules", "network:trained"]


def test_rules_model_builds_the_rule_segmenter() -> None:
    assert ModelSpec("rules").make(device="cpu").name.startswith("rules")
