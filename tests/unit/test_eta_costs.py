"""A job's expected run time: its shape's measured cost; a shape never run, its family's (a
model's per step and megapixel) scaled to it; else the queue's mean per unit."""

from __future__ import annotations

import pytest

from dash_ray.queues.eta import CostBook, job_seconds

pytestmark = pytest.mark.unit


def gen(model: str | None, px: int, steps: int, images: int = 1) -> dict:
    s = {"width": px, "height": px, "steps": steps, "numImages": images}
    return {"settings": {**s, "model": model} if model else s}


def test_a_new_shape_is_costed_from_its_models_rate_per_step_and_megapixel() -> None:
    book = CostBook()
    book.measured("generation", gen("a", 256, 150), 15.0)  # 0.1 s a step at 256 px
    costs = book.per_unit
    assert job_seconds("generation", gen("a", 256, 150), costs) == pytest.approx(15.0)  # its own shape
    assert job_seconds("generation", gen("a", 128, 40), costs) == pytest.approx(1.0)  # a quarter of the pixels
    assert job_seconds("generation", gen("a", 512, 10, images=2), costs) == pytest.approx(8.0)  # 4x pixels, 20 rows
    # Another model has only the queue's mean per step and image to go on.
    assert job_seconds("generation", gen("b", 128, 40), costs) == pytest.approx(4.0)
    # Once measured, a shape's own cost wins over its family's.
    book.measured("generation", gen("a", 128, 40), 2.0)
    assert job_seconds("generation", gen("a", 128, 40), book.per_unit) == pytest.approx(2.0)


def test_training_shapes_share_a_base_models_rate_and_queues_without_a_family_use_their_mean() -> None:
    book = CostBook()
    book.measured("training", {"imageUrls": ["x"] * 4, "settings": {"baseModel": "m", "resolution": 512,
                                                                    "epochs": 10, "rank": 8}}, 40.0)
    # 1 s an epoch and image at 512 px: at 256 px and another rank, a quarter of that.
    assert job_seconds("training", {"imageUrls": ["x"] * 2, "settings": {"baseModel": "m", "resolution": 256,
                                                                         "epochs": 4, "rank": 16}},
                       book.per_unit) == pytest.approx(2.0)
    up = CostBook()  # one book per queue, as each consumer keeps its own
    up.measured("upscaling", {"scale": 2}, 3.0)
    assert job_seconds("upscaling", {"scale": 4}, up.per_unit) == pytest.approx(3.0)  # the queue's mean
    assert job_seconds("sleep", {"durationS": 1}, CostBook().per_unit) is None  # nothing of the queue measured
