"""GPU workloads: generation, upscaling and LoRA training runners, model cache and artifacts.

Only this package imports torch and diffusers, and only in the runner modules: importing
`dash_ray.workers` or `dash_ray.workers.artifacts` stays light.
"""

__all__: list[str] = []
