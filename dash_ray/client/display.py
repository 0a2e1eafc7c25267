"""What people look at: progress bars (tqdm: a widget in Jupyter, text in a terminal), images,
the inline HTML of a job, a training job's loss curve. Pillow and matplotlib are imported only
when an image or a plot is asked for."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from dash_ray.models.events import JobCompletedEvent, JobFailedEvent, JobProgressEvent
from dash_ray.models.status import is_failure

__all__ = ["Bars", "job_html", "loss_png", "to_pil"]


def _describe(event: JobProgressEvent) -> str:
    bits = []
    if event.epoch is not None and event.epochs:
        bits.append(f"epoch {event.epoch}/{event.epochs}")
    if event.step is not None and event.steps:
        bits.append(f"step {event.step}/{event.steps}")
    if event.loss is not None:
        bits.append(f"loss {event.loss:.4f}")
    return " ".join(bits) or event.message[:40]


class Bars:
    """One progress bar per job, moved by its live events."""

    def __init__(self, handles: list[Any]) -> None:
        import shutil

        from tqdm.auto import tqdm

        # In a terminal, its width (a terminal that reports 0 columns would get no bar at all);
        # in Jupyter (widgets), tqdm's own layout.
        ncols = None if tqdm.__module__.startswith("tqdm.notebook") else shutil.get_terminal_size((100, 24)).columns
        self._bars = {}
        for i, h in enumerate(handles):
            self._bars[h.id] = tqdm(total=100, desc=f"{h.queue or 'job'} {h.id[:12]}", position=i, ncols=ncols,
                                    leave=True, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def update(self, event: Any) -> None:
        """Show an event on its job's bar."""
        bar = self._bars.get(event.job_id)
        if bar is None:
            return
        if isinstance(event, JobProgressEvent):
            bar.n = max(bar.n, min(100.0, event.progress))
            bar.set_postfix_str(f"{event.status} {_describe(event)}".strip(), refresh=False)
        elif isinstance(event, JobCompletedEvent):
            bar.n = 100
            bar.set_postfix_str("completed", refresh=False)
        elif isinstance(event, JobFailedEvent):
            bar.set_postfix_str(f"{event.status}: {event.error[:60]}", refresh=False)
        bar.refresh()

    def close(self) -> None:
        """Leave the bars as they ended."""
        for bar in self._bars.values():
            bar.close()


def to_pil(data: bytes) -> Any:
    """PNG/JPEG bytes as a PIL image."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("images need Pillow: pip install 'dash-ray[notebook]'") from exc
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def loss_png(losses: list[tuple[int, float]], title: str = "") -> bytes | None:
    """A training job's loss per epoch as a PNG (None without matplotlib or losses)."""
    if not losses:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(4, 2.5), dpi=100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.plot([e for e, _ in losses], [v for _, v in losses], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def job_html(view: Any, images: list[bytes], loss: bytes | None) -> str:
    """A job as HTML: queue, id, status, a progress bar, its message or error, its images as a
    grid and (training) its loss curve."""
    color = {"completed": "#2e7d32", "failed": "#c62828", "cancelled": "#6d6d6d", "expired": "#6d6d6d"}.get(
        view.status, "#1565c0")
    parts = [
        '<div style="font-family:sans-serif;font-size:13px">',
        f"<b>{html.escape(view.queue)}</b> <code>{html.escape(view.id)}</code> "
        f'<span style="color:{color};font-weight:bold">{html.escape(view.status)}</span> ',
        f'<progress value="{view.progress:.0f}" max="100" style="width:120px"></progress> {view.progress:.0f}%',
    ]
    note = view.error if is_failure(view.status) else view.message
    if note:
        parts.append(f"<div>{html.escape(str(note))}</div>")
    if images:
        parts.append('<div style="display:flex;flex-wrap:wrap;gap:4px;margin-top:4px">')
        for data in images:
            parts.append(f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" '
                         'style="max-width:256px;image-rendering:pixelated"/>')
        parts.append("</div>")
    if loss:
        parts.append(f'<img alt="loss per epoch" src="data:image/png;base64,{base64.b64encode(loss).decode()}"/>')
    parts.append("</div>")
    return "".join(parts)
