""".pt2 files that try to run code on load: each crafted archive's payload (it creates a marker file)
must never run without --allow-pickle, in ``build`` and in ``analyze``; --name must stay inside --out."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from edgecompress import pt2_archive
from edgecompress.errors import InputError, UnsafeLoadError
from edgecompress.load import load_model
from hostile_helpers import VECTORS, assert_one_error, digest, listing, rewrite_pt2, run_cli, torch_saved

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(params=sorted(VECTORS))
def crafted(request: pytest.FixtureRequest, small_mlp_pt2: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(hostile archive, marker file its payload would create)."""
    marker = tmp_path / f"marker-{request.param}"
    return rewrite_pt2(small_mlp_pt2, tmp_path / "evil.pt2", VECTORS[request.param](marker)), marker


def test_each_vector_is_real(crafted: tuple[Path, Path]) -> None:
    """The unguarded torch.export.load runs the payload: the refusal below is what stops it."""
    path, marker = crafted
    try:
        torch.export.load(path)
    except Exception:  # noqa: BLE001 - torch may fail after the payload ran; only the marker matters
        pass
    assert marker.exists()


@pytest.mark.parametrize("command", ["build", "analyze"])
def test_cli_refuses_without_running_the_payload(command: str, crafted: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    path, marker = crafted
    before = digest(path)
    out = tmp_path / "out"
    args = [command, str(path)] + (["--out", str(out)] if command == "build" else [])
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, 2, "--allow-pickle")
    assert not marker.exists() and not out.exists() and digest(path) == before


def test_guard_alone_stops_every_vector(crafted: tuple[Path, Path]) -> None:
    """Second line of defence: even without the inspection, torch cannot unpickle inside no_pickle()."""
    path, marker = crafted
    with pytest.raises(Exception), pt2_archive.no_pickle():  # noqa: B017 - torch wraps our refusal variously
        torch.export.load(path)
    assert not marker.exists()


def test_guard_is_undone(small_mlp_pt2: Path) -> None:
    original = torch.load
    with pt2_archive.no_pickle():
        assert torch.load is not original
    assert torch.load is original


def test_normal_archive_loads_without_flag(small_mlp_pt2: Path) -> None:
    info = pt2_archive.inspect_pt2(small_mlp_pt2)
    assert info.models == ("model",) and "data/sample_inputs/model.pt" in info.weights_only_members
    loaded = load_model(small_mlp_pt2)
    assert loaded.format == "export" and loaded.example_shape == (1, 64)


def test_allow_pickle_loads_a_plain_tensor_use_pickle_weight(small_mlp_pt2: Path, tmp_path: Path) -> None:
    """use_pickle with a harmless tensor: refused by default, loaded with --allow-pickle (the opt-in works)."""
    def edit(members: dict[str, bytes]) -> None:
        import json

        config = json.loads(members["data/weights/model_weights_config.json"])
        entry = config["config"]["0.bias"] if "0.bias" in config["config"] else next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members[f"data/weights/{entry['path_name']}"] = torch_saved(torch.nn.Parameter(torch.zeros(96)))
        members["data/weights/model_weights_config.json"] = json.dumps(config).encode()

    path = rewrite_pt2(small_mlp_pt2, tmp_path / "pickled.pt2", edit)
    with pytest.raises(UnsafeLoadError, match="--allow-pickle"):
        load_model(path)
    assert load_model(path, allow_pickle=True).format == "export"


@pytest.mark.parametrize("member,needle", [
    ("data/aotinductor/model/model.so", "compiled code"),
    ("version", None),  # only refused as old format when archive_format is missing (below)
])
def test_native_code_and_old_format(member: str, needle: str | None, small_mlp_pt2: Path, tmp_path: Path) -> None:
    def edit(members: dict[str, bytes]) -> None:
        members[member] = b"\x7fELF" if needle else b"1.0"
        if needle is None:
            members.pop("archive_format")
            members["serialized_exported_program.json"] = b"{}"
    path = rewrite_pt2(small_mlp_pt2, tmp_path / "odd.pt2", edit)
    with pytest.raises(UnsafeLoadError, match=needle or "old torch.export format"):
        pt2_archive.inspect_pt2(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 broken", bytes(range(256)) * 4])
def test_not_an_archive(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.pt2"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a readable torch.export archive"):
        pt2_archive.inspect_pt2(path)


def test_zip_without_program(tmp_path: Path) -> None:
    path = tmp_path / "other.pt2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("top/readme.txt", "hello")
    with pytest.raises(InputError, match="no models"):
        pt2_archive.inspect_pt2(path)


@pytest.mark.parametrize("config", [b"not json", b"[]", b'{"config": 3}', b'{"config": {"w": 1}}'])
def test_damaged_weights_config(config: bytes, small_mlp_pt2: Path, tmp_path: Path) -> None:
    def edit(members: dict[str, bytes]) -> None:
        members["data/weights/model_weights_config.json"] = config
    path = rewrite_pt2(small_mlp_pt2, tmp_path / "damaged.pt2", edit)
    with pytest.raises(InputError, match="damaged"):
        pt2_archive.inspect_pt2(path)


@pytest.mark.parametrize("name", ["../y", "../../x", "a/b", "..", ".hidden", "a\\b"])
def test_name_cannot_escape_the_output_folder(name: str, small_mlp_pt2: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "deep" / "out"
    code, _, err = run_cli(["build", str(small_mlp_pt2), "--out", str(out), "--name", name, "--quiet"], capsys)
    assert_one_error(code, err, 2, "--name")
    assert listing(tmp_path) == []
