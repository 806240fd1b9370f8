"""LineAR Model Loader: a model from ``models/linear_ar`` (or the built-in demo) → model wire."""
from __future__ import annotations

from .node_api import io

from ..linear_core.demo import DEMO_NAME
from . import checks
from .model_files import (AUTO, DEVICE_CHOICES, DTYPE_CHOICES, QUANTIZE_CHOICES, RESOLUTION_CHOICES,
                          check_model_folder, load_model,
                          model_choices, relative_to_models, resolve_model, resolve_tokenizer, tokenizer_choices)
from .sockets import CATEGORY, ModelSocket


class LineARModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LineAR_ModelLoader",
            display_name="LineAR Model Loader",
            category=CATEGORY,
            description="Loads an autoregressive image model for LineAR sampling. 'demo-digits' is built in "
                        "(no download); LlamaGen c2i_*.pt / .safetensors files go into models/linear_ar with "
                        "their VQ tokenizer vq_ds16_c2i.pt.",
            inputs=[
                io.Combo.Input("model", options=model_choices(), default=DEMO_NAME,
                               tooltip="Files and folders found in models/linear_ar (Refresh after adding one)."),
                io.Combo.Input("vq_tokenizer", options=tokenizer_choices(), default=AUTO,
                               tooltip="The image decoder of a LlamaGen GPT. 'auto' takes the only vq*.pt beside "
                                       "the GPT file; the demo needs none."),
                io.Combo.Input("resolution", options=RESOLUTION_CHOICES, default=AUTO,
                               tooltip="Image size of a LlamaGen GPT when its file name does not say it "
                                       "(c2i_XL_384.pt says 384); Lumina-mGPT and Emu3-Gen sizes (Emu3: 720 "
                                       "when auto)."),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default=AUTO,
                               tooltip="'auto' asks ComfyUI: bf16 or fp16 on GPUs that run them well, else fp32."),
                io.Combo.Input("device", options=DEVICE_CHOICES, default=AUTO,
                               tooltip="'auto' uses ComfyUI's device and memory management; 'cpu' keeps the "
                                       "model on the CPU."),
                io.Combo.Input("quantize", options=QUANTIZE_CHOICES, default="none", optional=True,
                               tooltip="Weight-only int8 / int4 of the decoder's linear layers (torchao), done at "
                                       "load: a 7B model in 4-8 GB. int4 runs on CUDA (Ampere+) and the CPU."),
            ],
            outputs=[ModelSocket.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, model: str, vq_tokenizer: str, resolution: str, dtype: str, device: str,
                        quantize: str = "none") -> bool | str:
        """Checked when the prompt is queued, so a missing file or an unknown choice is reported
        before anything runs."""
        error = checks.first_error(checks.choice("resolution", resolution, RESOLUTION_CHOICES),
                                   checks.choice("dtype", dtype, DTYPE_CHOICES),
                                   checks.choice("device", device, DEVICE_CHOICES),
                                   checks.choice("quantize", quantize, QUANTIZE_CHOICES))
        if error is not True or model is None:  # None: the model name comes over a link, checked at load
            return error
        try:
            found = resolve_model(model)
            check_model_folder(found)
            if vq_tokenizer not in (AUTO, None):  # 'auto' is resolved at load time, beside the chosen GPT file
                resolve_tokenizer(vq_tokenizer, found)
        except ValueError as error:
            return relative_to_models(str(error))
        return True

    @classmethod
    def execute(cls, model: str, vq_tokenizer: str, resolution: str, dtype: str, device: str,
                quantize: str = "none") -> io.NodeOutput:
        return io.NodeOutput(load_model(model, vq_tokenizer, resolution, dtype, device, quantize))
