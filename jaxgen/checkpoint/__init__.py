"""Every on-disk format jaxgen reads or writes.

  files        flattened safetensors and JSON, written atomically, read with clear errors
  model_dir    jaxgen checkpoint directories (policy, judge, flow decoder) and VQ params
  train_state  Orbax checkpoints of a training run's state (exact resume, corrupted-step fallback)

The Hugging Face layout is converted in `jaxgen.convert.hf`, which reads and writes its
safetensors through `files`.
"""

from jaxgen.checkpoint.files import (KEY_SEP, atomic_write, flatten, load_flat, load_tree,
                                     read_json, save_tree, shape_problems, unflatten, write_json)
from jaxgen.checkpoint.model_dir import (CONFIG_FILE, FLOW_CONFIG_FILE, FLOW_PARAMS_FILE,
                                         PARAMS_FILE, PROCESSOR_FILES, TOKENIZER_FILE,
                                         VQ_PARAMS_FILE, copy_processor_files, export_from_mesh, is_jaxgen_checkpoint, load_checkpoint,
                                         load_flow_checkpoint, load_vq_params, save_checkpoint,
                                         save_flow_checkpoint, save_vq_params)
from jaxgen.checkpoint.train_state import CheckpointManager, require_checkpoint

__all__ = [
    "KEY_SEP", "atomic_write", "flatten", "load_flat", "load_tree", "read_json", "save_tree",
    "shape_problems", "unflatten", "write_json", "CONFIG_FILE", "FLOW_CONFIG_FILE",
    "FLOW_PARAMS_FILE", "PARAMS_FILE", "PROCESSOR_FILES", "TOKENIZER_FILE", "VQ_PARAMS_FILE",
    "copy_processor_files", "export_from_mesh",
    "is_jaxgen_checkpoint", "load_checkpoint", "load_flow_checkpoint", "load_vq_params",
    "save_checkpoint", "save_flow_checkpoint", "save_vq_params", "CheckpointManager",
    "require_checkpoint",
]
