"""The model registry: parsing, one-line errors naming the model, fingerprints, columns."""

import pytest

from isles_pipeline.models import ModelRegistryError, ModelSpec, load_registry, parse_registry, write_registry


def test_built_in_registry_is_rules_alone(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ISLES_MODELS", raising=False)
    monkeypatch.delenv("ISLES_SEGMENTER", raising=False)
    registry = load_registry()
    assert registry.names == ["rules"]
    assert registry.input_columns() == ("dwi", "adc", "lesion_mask")


def test_without_a_registry_file_isles_segmenter_names_the_one_model(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ISLES_MODELS", raising=False)
    monkeypatch.setenv("ISLES_SEGMENTER", "nnunet")
    monkeypatch.setenv("ISLES_CHECKPOINT", str(tmp_path / "Dataset501_Tiny"))
    registry = load_registry()
    assert registry.names == ["nnunet:given"] and registry.get("nnunet:given").checkpoint == str(tmp_path / "Dataset501_Tiny")
    monkeypatch.delenv("ISLES_CHECKPOINT")
    with pytest.raises(ModelRegistryError, match="ISLES_SEGMENTER='nnunet' without a registry file: expected rules, or network/nnunet with ISLES_CHECKPOINT set"):
        load_registry()


def test_registry_file_round_trips(tmp_path) -> None:
    models = [ModelSpec("rules"), ModelSpec("network:small", "ckpt/model.ts", {"roi_size": [32, 32, 16]})]
    registry = load_registry(write_registry(tmp_path / "models.yaml", models))
    assert registry.names == ["rules", "network:small"]
    assert registry.get("network:small") == models[1]
    assert registry.get("network:small").slug == "network_small"
    assert registry.get("network:small").segmenter == "network"


def test_fingerprint_follows_the_settings() -> None:
    a = ModelSpec("network:a", "x.ts", {"overlap": 0.5})
    assert a.fingerprint == ModelSpec("network:a", "x.ts", {"overlap": 0.5}, "other description").fingerprint
    assert a.fingerprint != ModelSpec("network:a", "x.ts", {"overlap": 0.25}).fingerprint
    assert a.fingerprint != ModelSpec("network:a", "y.ts", {"overlap": 0.5}).fingerprint
    assert len(a.fingerprint) == 16


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"models": [{"name": "network:big"}]}, "model 'network:big' (<yaml>): a network model needs a checkpoint"),
        ({"models": [{"name": "Network:Big", "checkpoint": "x"}]}, "model 'Network:Big' (<yaml>): name must be"),
        ({"models": [{"name": "rules"}, {"name": "rules"}]}, "model 'rules' (<yaml>): registered twice"),
        ({"models": [{"name": "rules", "chekpoint": "x"}]}, "model 'rules' (<yaml>): unknown key(s) chekpoint"),
        ({"models": [{"name": "rules", "options": [1]}]}, "model 'rules' (<yaml>): options must be a mapping"),
        ({"models": []}, "model registry <yaml>: expected a non-empty list under 'models:'"),
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
