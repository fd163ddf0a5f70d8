"""Hugging Face <-> jaxgen conversion.

`jaxgen.convert.hf`: whole Janus directories (import_hf_dir / export_hf_dir, config mapping);
`jaxgen.convert.hf_vision_vq`: the vision tower and VQ tensors it delegates to.
"""
