"""Torch-free services that the gateway and the workers share: result files, the model registry."""

from dash_ray.services.artifacts import ArtifactStore, InvalidArtifactPath
from dash_ray.services.registry import TINY_SD, TINY_UPSCALER, ModelRegistry, lora_path

__all__ = ["TINY_SD", "TINY_UPSCALER", "ArtifactStore", "InvalidArtifactPath", "ModelRegistry", "lora_path"]
