"""data: ShapesWorld and the dataset interfaces.

shapes_world  renderer, scenes, scene graphs, render_for, the held-out colour-shape pairs
prompts       categories (GenEval, T2I-CompBench), metadata, held-out splits, perturbations,
              sample_prompt (a prompt with its ground-truth scene)
reasoning     GoT-R1 layout plans (+ parser) and ReasonGen-R1 detailed captions
tokenizer     small byte-level BPE tokenizer: build_tokenizer, load_tokenizer, special_token_ids
tfds_builders array_record TFDS datasets without TensorFlow; read_split
readers       ReasonGen-R1 SFT jsonl, GenEval metadata, T2I-CompBench txt, LAION-SG json
pipeline      Grain loader: seeded order, per-host shards, checkpointable iterator
judge         judge examples: yes/no with hard negatives, crops of each object, describe
corruptions   renderer-made malformed objects (the judges' negatives)
crops         crop_boxes: one object's zoomed window, shared by judge data and the crop reward
images        uint8 image batches: resize, VQ codes and VQ round trips through a jitted tokenizer
build         build_all(config, out_dir), load_split(data_dir, name, split)
templates     prompt templates of the unified model
"""
