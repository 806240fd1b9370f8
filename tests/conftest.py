"""Tiny random Llama-backbone image models, saved to disk and loaded back through transformers."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from linear_core.families.llama import LlamaImageModel


#: device the tests run on: ``LINEAR_TEST_DEVICE=cuda pytest`` runs the suite on a GPU
DEVICE = torch.device(os.environ.get("LINEAR_TEST_DEVICE", "cpu"))
# The exactness tests compare fp32 results at 1e-5; cuDNN rounds fp32 convolutions through TF32 by
# default (the decoders then differ from the references by ~1e-3 on a GPU), so it is switched off.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def tiny_model(tmp_path, kv_heads: int = 4, layers: int = 2, vocab: int = 48, prompt_tokens: int = 2,
               seed: int = 0) -> LlamaImageModel:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
                         rms_norm_eps=1e-5)
    model = LlamaImageModel(config, num_classes=10, prompt_tokens=prompt_tokens)
    # Larger embeddings than the default init give peaked, input-dependent attention, so eviction
    # visibly changes the logits and the exactness tests have something to catch.
    with torch.no_grad():
        model.backbone.embed_tokens.weight.normal_(0, 1.0)
        model.class_embedding.weight.normal_(0, 1.0)
        for layer in model.backbone.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    path = tmp_path / f"backbone-kv{kv_heads}-l{layers}"
    model.backbone.save_pretrained(path)
    model.backbone = LlamaModel.from_pretrained(path, dtype=torch.float32)
    return model.eval().to(DEVICE)


@pytest.fixture
def model(tmp_path):
    return tiny_model(tmp_path)


@pytest.fixture
def gqa_model(tmp_path):
    return tiny_model(tmp_path, kv_heads=2)


def pytest_collection_modifyitems(config, items):
    """The ComfyUI tier last: it imports ComfyUI into this process (which edits `sys.path` and global
    torch settings), so the engine tests run before it, in a process ComfyUI has not touched."""
    items.sort(key=lambda item: "tests/comfyui/" in item.nodeid)


def record_cache_bytes(monkeypatch) -> list[int]:
    """Patch `DecodeSession.close` to record, per run, the bytes its cache buffers and query buffer
    hold just before they are released; returns the list it appends to."""
    from linear_core import engine

    measured: list[int] = []
    original_close = engine.DecodeSession.close

    def measure_then_close(self):
        tensors = [t for layer in self.cache.layers
                   for t in (layer.keys, layer.values, layer.image_index, layer.slot_scores) if t is not None]
        tensors += self.stream.queries.slots if self.stream.queries is not None else []
        measured.append(sum(t.numel() * t.element_size() for t in tensors))
        original_close(self)

    monkeypatch.setattr(engine.DecodeSession, "close", measure_then_close)
    return measured
