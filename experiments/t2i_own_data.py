"""Text-to-image on your own image-text data (a folder or a tfds dataset).

    python -m launch.build_data --dataset folder --source_dir PHOTOS \
        --data_dir data --resolution 64        # dataset "photos" (--name)
    python -m launch.train --config experiments/t2i_own_data.py:res=64 \
        --workdir runs/photos --config.data.dataset=photos

The model, diffusion and optimizer are the ShapesWorld text-to-image ones
(`t2i_shapes`); options (`:a=1,b`) too: res, smoke, minutes.
"""

import ml_collections

from experiments import t2i_shapes
from imagen_jax.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, **t2i_shapes.OPTIONS)
    c = t2i_shapes.build(opts)
    c.data.name = "own_data"
    # The dataset's name as built by `launch.build_data` (its --name; by
    # default the folder's or tfds dataset's name), at `data.resolution`
    # under `data.data_dir`.
    c.data.dataset = ""
    if not opts.smoke:
        # Real captions run longer than ShapesWorld's; the byte tokenizer
        # cuts a caption after this many bytes.
        c.data.max_text_len = 128
    # The ShapesWorld evaluators score with ShapesWorld's oracle: none here.
    c.evals = ml_collections.ConfigDict()
    return c
