"""GPU workloads: generation, upscaling and LoRA training runners, the model cache, tiny models.

Only this package imports torch and diffusers, and only in the runner modules: importing
`dash_ray.workers` stays light.
"""

__all__: list[str] = []
