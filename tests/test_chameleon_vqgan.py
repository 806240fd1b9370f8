"""Our Chameleon VQGAN decoder, loaded from tiny checkpoints in Meta's format, against an
independent float64 decode of the same state dict; shapes, range and the loader's errors."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from chameleon_files import reference_decode, tiny_vqgan_state, write_tiny_vqgan
from llamagen_files import tiny_vq_state
from linear_core.decoders.chameleon_vqgan import load_chameleon_vqgan


@pytest.mark.parametrize("mult,res,attn_levels", [((1, 2), 1, ()), ((1, 1, 2), 2, (2,))])
def test_decoder_equals_the_functional_reference(tmp_path, mult, res, attn_levels):
    folder = write_tiny_vqgan(tmp_path / "vqgan", mult=mult, res=res, attn_levels=attn_levels, seed=3)
    decoder = load_chameleon_vqgan(folder)
    codes = torch.randint(0, 64, (2, 3 * 5), generator=torch.Generator().manual_seed(0))
    image = decoder(codes, 3, 5)
    scale = 2 ** (len(mult) - 1)
    assert image.shape == (2, 3, 3 * scale, 5 * scale) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.01
    state = tiny_vqgan_state(mult=mult, res=res, attn_levels=attn_levels, seed=3)
    expected = reference_decode(state, codes, 3, 5).float()
    assert (image - expected).abs().max() < 1e-4
    assert (decoder(codes.flip(1), 3, 5) - expected).abs().max() > 1e-2  # the codes' order matters


def test_the_level_order_is_read_from_the_keys(tmp_path):
    """Swapping two same-shaped res blocks between ``up.0`` and ``up.1`` changes the decode, in the
    reference and in ours alike, so neither can be running the levels in the wrong order."""
    state = tiny_vqgan_state(mult=(1, 1, 2), res=1, seed=5)
    swapped = dict(state)
    for key in [k for k in state if k.startswith("decoder.up.0.block.1.")]:
        other = key.replace("up.0.", "up.1.")
        swapped[key], swapped[other] = state[other], state[key]
    (tmp_path / "vqgan").mkdir()
    torch.save({"state_dict": swapped}, tmp_path / "vqgan" / "vqgan.ckpt")
    codes = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    image = load_chameleon_vqgan(tmp_path / "vqgan")(codes, 3, 4)
    assert (image - reference_decode(swapped, codes, 3, 4).float()).abs().max() < 1e-4
    assert (image - reference_decode(state, codes, 3, 4).float()).abs().max() > 1e-2


def test_a_safetensors_copy_loads_from_its_folder_or_as_the_file(tmp_path):
    from safetensors.torch import save_file

    state = tiny_vqgan_state(seed=2)
    (tmp_path / "vqgan").mkdir()
    save_file(state, tmp_path / "vqgan" / "vqgan.safetensors")
    codes = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    expected = reference_decode(state, codes, 2, 3).float()
    for path in (tmp_path / "vqgan", tmp_path / "vqgan" / "vqgan.safetensors"):
        assert (load_chameleon_vqgan(path)(codes, 2, 3) - expected).abs().max() < 1e-4


def test_the_checkpoint_file_alone_loads_and_bf16_decodes(tmp_path):
    folder = write_tiny_vqgan(tmp_path / "vqgan", yaml=False)
    assert "state_dict" in torch.load(folder / "vqgan.ckpt", map_location="cpu", weights_only=True)
    decoder = load_chameleon_vqgan(folder / "vqgan.ckpt", dtype=torch.bfloat16)
    assert decoder.codebook_size == 64
    image = decoder(torch.zeros(1, 16, dtype=torch.long), 4, 4)
    assert image.dtype == torch.float32 and image.isfinite().all()


def test_wrong_files_and_folders_are_explained(tmp_path):
    with pytest.raises(ValueError, match="vqgan.ckpt and vqgan.yaml"):
        load_chameleon_vqgan(tmp_path / "missing")
    folder = write_tiny_vqgan(tmp_path / "vqgan")
    yaml = folder / "vqgan.yaml"
    yaml.write_text(yaml.read_text().replace("n_embed: 64", "n_embed: 8192"))
    with pytest.raises(ValueError, match="n_embed: yaml 8192, weights 64"):
        load_chameleon_vqgan(folder)
    folder = write_tiny_vqgan(tmp_path / "attn", mult=(1, 1, 2), attn_levels=(2,))
    yaml = folder / "vqgan.yaml"
    yaml.write_text(yaml.read_text().replace("attn_resolutions: [16]", "attn_resolutions: []"))
    with pytest.raises(ValueError, match=r"attn_resolutions: yaml \[\], weights \[16\]"):
        load_chameleon_vqgan(folder)
    yaml.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="not a taming VQGAN config"):
        load_chameleon_vqgan(folder)
    llamagen = tmp_path / "vq_ds16_c2i.pt"
    torch.save({"model": tiny_vq_state()}, llamagen)
    with pytest.raises(ValueError, match="LlamaGen's VQ-16 tokenizer"):
        load_chameleon_vqgan(llamagen)


def test_a_lightning_checkpoint_with_foreign_classes_loads_without_running_them(tmp_path, capsys):
    """Meta's vqgan.ckpt is a training checkpoint: objects of classes that are not installed here
    (trainer callbacks) sit beside the tensors. They are stood in for, never imported or run."""
    module = types.ModuleType("lightning_like")

    class ModelCheckpoint:
        def __setstate__(self, state):
            print("foreign code ran")

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    sys.modules[module.__name__] = module
    callback = ModelCheckpoint()
    callback.best_model_path = "last.ckpt"
    try:
        folder = tmp_path / "vqgan"
        folder.mkdir()
        torch.save({"state_dict": tiny_vqgan_state(), "callbacks": {"ModelCheckpoint": callback}},
                   folder / "vqgan.ckpt")
    finally:
        del sys.modules[module.__name__]  # gone, as on a machine without the training stack
    decoder = load_chameleon_vqgan(folder)
    assert decoder.codebook_size == 64
    assert "foreign code ran" not in capsys.readouterr().out
