"""Stable Diffusion pipelines: loading a local folder safely (``loading``), the checked model choice of a command
(``choice``), random-weight test pipelines (``tiny``), SD's parts and schedule (``sd_parts``), and the CLIP
tokenizer built from open_clip's files (``clip_tokenizer``).

Nothing is imported here, so that ``import dfusion_bench.models`` stays cheap; import the module you need.
"""
