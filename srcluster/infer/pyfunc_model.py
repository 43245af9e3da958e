"""The pyfunc side of a registered generator, saved with it as code (MLflow "models from code"), not as a pickle.

`mlflow.pyfunc.load_model("models:/demo-gan_4x@champion").predict([rgb_uint8_hwc, ...])` returns the upscaled images.
srcluster itself never loads models this way: it reads the safetensors file and the arch metadata directly.
"""

from __future__ import annotations

import warnings

from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel  # where it is defined (mlflow.pyfunc re-exports it without __all__)

# MLflow checks predict()'s type hints when the class is defined and advises adding them, every time a model is loaded;
# this model takes a list of images (any size), not a typed schema.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class GeneratorModel(PythonModel):
        def load_context(self, context) -> None:
            # torch and the inference path load here, not at the top: MLflow runs this file when it logs the model
            import torch

            from srcluster.infer.upscaler import load_upscaler

            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self.model = load_upscaler(context.artifacts["generator"], self.device)

        def predict(self, context, model_input, params=None):
            from srcluster.infer.upscaler import upscale_array  # not at the top: see load_context

            params = params or {}
            images = model_input if isinstance(model_input, list) else [model_input]
            return [
                upscale_array(
                    self.model, image, tile=int(params.get("tile", 512)), overlap=int(params.get("tile_overlap", 32))
                )
                for image in images
            ]


set_model(GeneratorModel())
