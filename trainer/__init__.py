"""ACE++ trainer: config, data, caching, model, loop, checkpoints and export.

Entry point: ``python trainer/run.py --config run.toml``. Import ComfyUI first
(``aceplus_host.import_comfy()``): this package uses ComfyUI's FLUX code and loaders.
"""
