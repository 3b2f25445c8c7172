"""benchmarks/torch_peer.py is the same network as GCNSegmentation: a flax model's variables loaded into it give
the same logits and it has as many parameters. Runs where torch is installed (it is not a dependency)."""

import json

import jax
import numpy as np
import pytest

from gcn_jax.models import GCNSegmentation
from gcn_jax.models.summary import count_params

torch = pytest.importorskip("torch")
from benchmarks import compare_torch, torch_peer  # noqa: E402


def random_variables(model, image_shape, seed=0):
    """Variables of the model's shapes, every one random (no bilinear deconvs, zero BR convs or biases, BN
    statistics of 0 and 1 that could hide a transposed, flipped or misplaced array); kernels scaled by
    1/sqrt(fan-in). Drawn with numpy on `jax.eval_shape`'s shapes: compiling the model's init takes longer."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return ((name == "scale") + 0.1 * rng.standard_normal(shape)).astype(np.float32)  # scale, bias, mean

    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(image_shape, np.float32))
    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@pytest.fixture(scope="module")
def pair():
    model = GCNSegmentation(num_classes=5, backbone="resnet18", kernel_size=7)
    images = np.random.default_rng(1).standard_normal((2, 45, 61, 3)).astype(np.float32)  # odd: every crop
    variables = random_variables(model, images.shape)
    peer = torch_peer.GCNSegmentation(num_classes=5, backbone="resnet18", kernel_size=7)
    state = torch_peer.state_dict_from_flax(variables)
    expected = {k for k in peer.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(state) == expected
    peer.load_state_dict(state, strict=False)
    return model, variables, peer, images


def test_the_peer_has_the_same_parameter_count(pair):
    model, variables, peer, _ = pair
    assert torch_peer.count_parameters(peer) == count_params(variables["params"])


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_the_peer_computes_the_same_logits(pair, train):
    # train=True: BN normalises with the batch statistics on both sides.
    model, variables, peer, images = pair
    logits = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=train and ["batch_stats"]))(
        variables, images)
    logits = np.asarray(logits[0] if train else logits)
    peer.train(train)
    with torch.no_grad():
        out = peer(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert out.shape == logits.shape == (2, 45, 61, 5)
    np.testing.assert_allclose(out, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


def test_amp_computes_in_bfloat16_close_to_float32(pair):
    # --amp: the peer of model.dtype=bfloat16 (convolutions in bfloat16, the result near float32's)
    _, _, peer, images = pair
    peer.eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        full = peer(x)
        with torch_peer.autocast(torch_peer.parse_args(["--amp"])):
            half = peer(x)
        with torch_peer.autocast(torch_peer.parse_args([])):
            same = peer(x)
    assert full.dtype == same.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert torch.equal(same, full)
    error = (half.float() - full).abs().max() / full.abs().max()
    assert 1e-4 < error < 0.05  # bfloat16 keeps 8 bits of mantissa: about 0.4% per rounding


def test_the_peer_times_a_training_step_with_amp_and_writes_json(tmp_path):
    out = tmp_path / "peer.json"
    torch_peer.main(["--backbone", "resnet18", "--kernel-size", "3", "--size", "40", "--batch", "2", "--amp",
                     "--mode", "train", "--warmup", "1", "--reps", "2", "--steps", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["settings"]["amp"] is True and result["settings"]["device"] == "cpu"
    assert result["memory_source"] == "process peak RSS" and result["peak_memory_bytes"] > 0
    assert len(result["train"]["step_s"]) == 2 and result["train"]["images_per_s"] > 0 and "infer" not in result


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a GPU")
def test_a_cuda_device_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        torch_peer.parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda: this torch" in capsys.readouterr().err


def test_running_out_of_gpu_memory_is_a_clear_error(monkeypatch, capsys):
    def out_of_memory(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(torch_peer, "bench_train", out_of_memory)
    with pytest.raises(SystemExit) as exit_info:
        torch_peer.main(["--batch", "64", "--mode", "train"])
    assert exit_info.value.code == torch_peer.EXIT_OUT_OF_MEMORY == compare_torch.TORCH_OUT_OF_MEMORY  # its retry
    assert capsys.readouterr().err == ("torch_peer.py: out of memory on cpu at --batch 64 (try a smaller --batch): "
                                       "CUDA out of memory. Tried to allocate 2.00 GiB\n")
