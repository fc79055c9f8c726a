"""Pretrained weights as a user meets them: downloaded with progress from a local HTTP server into
a torch hub cache of the test's own, resumed after a cut or a cancel, refused on a bad checksum,
imported from a file the user downloaded by hand."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision import models

from studio.engine.backbones import build_model, hub_cache_path, pretrained_available
from studio.engine.config import ModelConfig
from studio.engine.downloads import (
    DownloadCancelled,
    download_weights,
    ensure_pretrained,
    expected_hash_prefix,
    import_weights_file,
    part_path,
    weights_to_download,
)
from studio.engine.errors import WeightsError

SQUEEZENET = ModelConfig(backbone="squeezenet1_1", weights="default")


def first_conv(built_or_state: object) -> torch.Tensor:
    if isinstance(built_or_state, dict):
        return built_or_state["features.0.weight"]
    return built_or_state.model.features[0].weight  # type: ignore[attr-defined]


def test_the_hash_prefix_is_read_as_torch_hub_reads_it() -> None:
    assert expected_hash_prefix("resnet18-f37072fd.pth") == "f37072fd"
    assert expected_hash_prefix("efficientnet_b0_rwightman-7f5810bc.pth") == "7f5810bc"
    assert expected_hash_prefix("mine.pth") is None


def test_a_download_lands_verified_in_the_cache_and_the_model_uses_it(served_weights) -> None:
    seen: list[tuple[int, int | None]] = []
    assert weights_to_download(SQUEEZENET) is served_weights.weights

    path = download_weights(served_weights.weights, None, lambda d, t: seen.append((d, t)))
    assert path == served_weights.cached == hub_cache_path(served_weights.weights)
    assert path.read_bytes() == served_weights.file.read_bytes()
    assert not part_path(path).exists() and not list(path.parent.glob("*.lock"))
    assert seen[0] == (0, served_weights.size) and seen[-1] == (served_weights.size,) * 2
    assert pretrained_available(served_weights.weights)
    assert weights_to_download(SQUEEZENET) is None

    built = build_model(SQUEEZENET, 3)
    assert torch.equal(first_conv(built), first_conv(torch.load(served_weights.file)))


def test_build_model_downloads_through_the_same_path(served_weights, file_server) -> None:
    seen: list[int] = []
    build_model(SQUEEZENET, 3, progress=lambda done, total: seen.append(done))
    assert served_weights.cached.is_file() and seen[-1] == served_weights.size
    assert len(file_server.requests) == 1


def test_a_cut_connection_resumes_with_a_range_request(served_weights, file_server) -> None:
    file_server.cut_after = served_weights.size // 2
    path = download_weights(served_weights.weights)
    assert path.read_bytes() == served_weights.file.read_bytes()
    first, second = file_server.requests
    assert first["range"] is None
    assert second["range"] == f"bytes={served_weights.size // 2}-"
    assert file_server.bytes_sent < 2 * served_weights.size


def test_a_server_that_ignores_range_restarts_the_file(served_weights, file_server) -> None:
    part = part_path(served_weights.cached)
    part.parent.mkdir(parents=True)
    part.write_bytes(served_weights.file.read_bytes()[:1000])
    file_server.ignore_range = True
    path = download_weights(served_weights.weights)
    assert path.read_bytes() == served_weights.file.read_bytes()
    assert file_server.requests[0]["range"] == "bytes=1000-"


def test_a_complete_part_answered_416_is_finished(served_weights, file_server) -> None:
    part = part_path(served_weights.cached)
    part.parent.mkdir(parents=True)
    shutil.copyfile(served_weights.file, part)
    assert download_weights(served_weights.weights).is_file()
    assert [r["sent"] for r in file_server.requests] == [0]


def test_a_bad_checksum_deletes_the_file_and_says_so(served_weights, monkeypatch) -> None:
    wrong = served_weights.file.with_name("squeezenet1_1-00000000.pth")
    served_weights.file.rename(wrong)
    monkeypatch.setattr(served_weights.weights.value, "url", served_weights.url.replace(
        served_weights.file.name, wrong.name))
    dest = hub_cache_path(served_weights.weights)
    with pytest.raises(WeightsError) as caught:
        download_weights(served_weights.weights)
    message = str(caught.value)
    assert "checksum" in message and served_weights.weights.url in message
    assert str(dest) in message
    assert not dest.exists() and not part_path(dest).exists()


def test_cancel_keeps_the_part_and_the_next_download_resumes(served_weights,
                                                             file_server) -> None:
    cancel = threading.Event()

    def progress(done: int, total: int | None) -> None:
        if done >= 64 * 1024:
            cancel.set()

    with pytest.raises(DownloadCancelled, match="resumes"):
        download_weights(served_weights.weights, None, progress, cancel)
    part = part_path(served_weights.cached)
    kept = part.stat().st_size
    assert 0 < kept < served_weights.size and not served_weights.cached.exists()

    assert download_weights(served_weights.weights).read_bytes() == \
        served_weights.file.read_bytes()
    assert file_server.requests[-1]["range"] == f"bytes={kept}-"


def test_a_server_that_is_down_is_one_sentence_naming_the_url(hub_home, monkeypatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    weights = models.SqueezeNet1_1_Weights.DEFAULT
    url = f"http://127.0.0.1:{port}/squeezenet1_1-0123abcd.pth"
    monkeypatch.setattr(weights.value, "url", url)
    with pytest.raises(WeightsError) as caught:
        ensure_pretrained(SQUEEZENET)
    message = str(caught.value)
    assert url in message and str(hub_cache_path(weights)) in message
    assert "\n" not in message


def test_a_missing_file_names_the_http_status(served_weights, monkeypatch) -> None:
    monkeypatch.setattr(served_weights.weights.value, "url",
                        served_weights.url.replace("squeezenet1_1-", "nothing-"))
    with pytest.raises(WeightsError, match="answered 404"):
        download_weights(served_weights.weights)


# -- importing a file the user downloaded ---------------------------------------------------


def plain_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return models.squeezenet1_1(weights=None).state_dict()


def test_an_imported_pth_is_copied_and_used_despite_its_hash(hub_home, tmp_path) -> None:
    weights = models.SqueezeNet1_1_Weights.DEFAULT
    state = plain_state(1)
    source = tmp_path / "downloaded.pth"
    torch.save(state, source)

    dest = import_weights_file(source, weights)
    assert dest == hub_cache_path(weights) and dest.read_bytes() == source.read_bytes()
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    assert not digest.startswith(expected_hash_prefix(dest.name))  # torch hub won't check it
    plain = models.get_model("squeezenet1_1", weights=weights)  # torchvision's own loading
    assert torch.equal(plain.features[0].weight, state["features.0.weight"])
    built = build_model(SQUEEZENET, 3)
    assert torch.equal(first_conv(built), state["features.0.weight"])


def test_an_imported_safetensors_file_becomes_a_pth_state_dict(hub_home, tmp_path) -> None:
    weights = models.SqueezeNet1_1_Weights.DEFAULT
    state = plain_state(2)
    source = tmp_path / "downloaded.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(source))

    dest = import_weights_file(source, weights)
    assert torch.load(dest, weights_only=True).keys() == state.keys()
    assert not list(dest.parent.glob("*.tmp"))
    built = build_model(SQUEEZENET, 3)
    assert torch.equal(first_conv(built), state["features.0.weight"])


def test_an_import_of_another_models_weights_is_refused(hub_home, tmp_path) -> None:
    source = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7),
                "features.0.weight": torch.zeros(1, 1, 1, 1)}, source)
    with pytest.raises(WeightsError) as caught:
        import_weights_file(source, models.SqueezeNet1_1_Weights.DEFAULT)
    message = str(caught.value)
    assert str(source) in message and "missing" in message and "conv1.weight" in message
    assert "another shape" in message
    assert not hub_cache_path(models.SqueezeNet1_1_Weights.DEFAULT).exists()


def test_an_import_holding_code_is_never_unpickled(hub_home, tmp_path) -> None:
    source = tmp_path / "pickled.pth"
    torch.save({"weights": plain_state(3), "callback": threading.Event}, source)
    with pytest.raises(WeightsError, match="Python objects"):
        import_weights_file(source, models.SqueezeNet1_1_Weights.DEFAULT)


def test_two_downloads_of_one_file_fetch_it_once(served_weights, file_server) -> None:
    """As torchrun ranks started by hand do: one downloads, the other waits and finds it."""
    file_server.gate = threading.Event()
    started = threading.Event()
    paths: list[Path] = []

    def first() -> None:
        paths.append(download_weights(served_weights.weights, None,
                                      lambda done, total: started.set()))

    def second() -> None:
        paths.append(download_weights(served_weights.weights))

    one = threading.Thread(target=first)
    one.start()
    assert started.wait(10)  # the first holds the lock and is receiving
    two = threading.Thread(target=second)
    two.start()
    file_server.gate.set()
    one.join(30)
    two.join(30)
    assert paths == [served_weights.cached] * 2 and len(file_server.requests) == 1
    assert served_weights.cached.read_bytes() == served_weights.file.read_bytes()
