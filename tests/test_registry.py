from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.compat import tomllib
from edge.errors import Code, EdgeError
from edge.inference.registry import Registry
from tests.conftest import MODELS
from tests.tinymodel import make_model_dir, manifest


def test_every_shipped_manifest_is_valid_and_its_files_verify() -> None:
    registry = Registry(MODELS)
    assert registry.names(), "no model ships in models/"
    for entry in registry.entries():
        for variant, spec in entry.manifest.variants.items():
            assert entry.variant_file(variant).stat().st_size < 5 * 1024 * 1024
            if spec.precision != "fp32":
                assert spec.gate is not None, f"{entry.name}:{variant} ships without its accuracy gate"
        assert entry.samples, f"{entry.name} ships no samples"
        assert all(path.is_file() for path, _ in entry.samples)
        assert (entry.folder / "MODEL_CARD.md").is_file()


def test_tiny_model_loads(tmp_path: Path) -> None:
    make_model_dir(tmp_path)
    entry = Registry(tmp_path).get("tiny")
    assert entry.manifest.input.preprocess_spec().height == 8
    assert entry.operating_point(None)[0] == "balanced"
    assert entry.operating_point("screening")[1].threshold == 0.2
    assert entry.operating_point("no-such-point")[0] == "balanced"


@pytest.mark.security
def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path)
    onnx_file = folder / "tiny-fp32.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(EdgeError) as caught:
        Registry(tmp_path).get("tiny").variant_file("fp32")
    assert caught.value.code is Code.MODEL_CHECKSUM_MISMATCH
    assert "refusing" in caught.value.message


def test_missing_file_and_variant(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path)
    (folder / "tiny-int8.onnx").unlink()
    entry = Registry(tmp_path).get("tiny")
    with pytest.raises(EdgeError) as caught:
        entry.variant_file("int8")
    assert caught.value.code is Code.MODEL_FILE_MISSING
    with pytest.raises(EdgeError) as caught:
        entry.variant_file("fp16")
    assert caught.value.code is Code.MODEL_VARIANT_UNAVAILABLE


@pytest.mark.parametrize("name", ["nope", "", "../models", "tiny/../tiny"])
def test_unknown_model(tmp_path: Path, name: str) -> None:
    make_model_dir(tmp_path)
    with pytest.raises(EdgeError) as caught:
        Registry(tmp_path).get(name)
    assert caught.value.code is Code.MODEL_UNKNOWN
    assert "tiny" in caught.value.message  # says what is installed


def _broken(tmp_path: Path, mutate: Any, code: Code = Code.MODEL_MANIFEST_INVALID) -> EdgeError:
    folder = make_model_dir(tmp_path)
    with (folder / "model.toml").open("rb") as handle:
        data = tomllib.load(handle)
    mutate(data)
    import tomli_w

    (folder / "model.toml").write_text(tomli_w.dumps(data))
    with pytest.raises(EdgeError) as caught:
        Registry(tmp_path).get("tiny")
    assert caught.value.code is code
    return caught.value


def test_manifest_errors_are_specific(tmp_path: Path) -> None:
    # A key or a schema this reader does not know comes from a newer release tool (or a typo):
    # the fix is newer software, not reinstalling the model.
    newer = Code.MODEL_NEEDS_NEWER_SOFTWARE
    assert "surprise" in _broken(tmp_path / "a", lambda d: d.update(surprise=1), newer).message
    assert "schema 2" in _broken(tmp_path / "a2", lambda d: d.update(schema_version=2), newer).message
    both = lambda d: (d["input"].update(colour="rgb"), d.update(surprise=1))  # noqa: E731
    assert "surprise" in _broken(tmp_path / "a4", both, newer).message  # the unknown key decides
    assert "schema_version" in _broken(tmp_path / "a3", lambda d: d.update(schema_version=0)).message
    assert "positive" in _broken(tmp_path / "b", lambda d: d["output"].update(positive="x")).message
    assert (
        "default_operating_point"
        in _broken(tmp_path / "c", lambda d: d.update(default_operating_point="x")).message
    )
    assert "fp32" in _broken(tmp_path / "d", lambda d: d["variants"].pop("fp32")).message
    assert "sha256" in _broken(tmp_path / "e", lambda d: d["variants"]["fp32"].update(sha256="abc")).message
    assert "channels" in _broken(tmp_path / "f", lambda d: d["input"].update(colour="rgb")).message
    assert "name" in _broken(tmp_path / "g", lambda d: d.update(name="other")).message


def test_unparseable_manifest(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path)
    (folder / "model.toml").write_text("name = [unclosed")
    with pytest.raises(EdgeError) as caught:
        Registry(tmp_path).get("tiny")
    assert caught.value.code is Code.MODEL_MANIFEST_INVALID


def test_routing_by_modality_and_body_part(tmp_path: Path) -> None:
    make_model_dir(tmp_path)
    registry = Registry(tmp_path)
    assert registry.route("CR", "CHEST") == ["tiny"]
    assert registry.route("CR", None) == ["tiny"]
    assert registry.route("CR", "KNEE") == []
    assert registry.route("US", "CHEST") == []
    assert registry.route(None, None) == ["tiny"]  # it takes unlabelled inputs


def test_manifest_fixture_is_itself_valid(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    assert manifest(tmp_path / "tiny")["name"] == "tiny"


def test_a_variant_whose_out_of_fold_gate_failed_is_not_served() -> None:
    from edge.inference.registry import Variant

    gate = {"passed": True, "images": 10, "auc_reference": 0.9, "auc": 0.9, "auc_delta": 0.0}
    gate |= {"agreement": 1.0}
    variant = {"file": "m.onnx", "sha256": "0" * 64, "precision": "int8", "quantization": "qdq"}
    assert Variant(**variant, gate=gate).servable
    assert Variant(**variant, gate={**gate, "out_of_fold": gate}).servable
    failed = {**gate, "out_of_fold": {**gate, "passed": False, "agreement": 0.95}}
    assert not Variant(**variant, gate=failed).servable  # a hand-edited `passed = true` is not enough
