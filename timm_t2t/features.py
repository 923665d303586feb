"""Feature maps of any timm model, drawn as the T2T-ViT paper's Figure 2 draws them, and how rich they are.

    model = load_model('t2t_vit_14')                               # or weights='runs/digits/t2t_vit_7', any timm model
    layers = resolve_layers(model)                                 # a few layers spread over depth
    maps = extract_maps(model, x, layers)                          # one (B, C, H, W) map per layer
    reports = measure_features(model, batches, layers)             # per layer: invalid channels, effective rank
    draw_figure([Panel('T2T-ViT-14', image, [LayerMaps(...)])], 'fig.png')

The maps are what timm gives: `forward_intermediates(x, indices, output_fmt='NCHW', intermediates_only=True)` (for
a T2T-ViT the re-structurized outputs of its T2T layers, then each block's tokens on their grid; for a ViT its blocks'
tokens without class or register tokens; for a CNN its stage outputs). A model without `forward_intermediates` gives
the outputs of the modules its `feature_info` names, as `features_only` does. Layers are indices into `feature_info`,
as forward_intermediates' `indices` are; negative ones count from the end.

Each map is drawn as the paper's visualization code draws it (matplotlib's `imshow` in gray): scaled on its own from
its minimum (black) to its maximum (white). A channel is *invalid* on an image when its map is
- *flat*: its standard deviation over the map is at most FLAT_SPREAD (1%) of the median channel's in that layer on
  that image, an all-zero map included: it shows nothing; or
- *outlying*: its largest absolute value is more than OUTLYING_PEAK (10) times the median of the layer's non-flat
  channels' largest absolute values on that image: it stands far outside the layer's distribution.
The reports also give the smallest spread and the largest peak seen, relative to those medians (`channel_ratios`):
how near the valid channels come to the thresholds.

Richness is the effective rank (Roy and Vetterli, 2007) of a layer's channels over every position of every image:
exp of the entropy of the normalized singular values of the centred (positions x channels) matrix. It is 1 when
every channel is one map up to scale, and the channel count when the channels are uncorrelated with equal energy.

The models come from `timm_t2t.weights`, whose `load_model` is importable from here too.
"""
import dataclasses
import math
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._text import plural
from .weights import load_model

__all__ = [
    'DEFAULT_LAYER_COUNT', 'FLAT_SPREAD', 'OUTLYING_PEAK', 'LayerMaps', 'LayerReport', 'LayerStatistics', 'Panel',
    'channel_ratios', 'default_layers', 'draw_figure', 'effective_rank', 'extract_maps', 'feature_modules',
    'invalid_channels', 'load_model', 'map_grid', 'measure_features', 'normalize_maps', 'resolve_layers',
]

PathLike = Union[str, Path]

FLAT_SPREAD = 0.01  # flat: standard deviation at most this fraction of the layer's median channel's
OUTLYING_PEAK = 10.  # outlying: largest |value| above this multiple of the layer's median non-flat channel's
DEFAULT_LAYER_COUNT = 4  # layers drawn and measured when none are named: spread evenly over the feature list

INSTALL_MATPLOTLIB = 'Drawing the figure needs matplotlib: pip install matplotlib (or pip install "timm-t2t[bench]").'


def feature_modules(model: nn.Module) -> List[str]:
    """The names of the modules of a model's feature list (timm's `feature_info`), in order."""
    info = getattr(model, 'feature_info', None)
    if not info:
        raise ValueError(f'{type(model).__name__} has no feature_info, so timm gives no intermediate feature maps of '
                         f'it (neither forward_intermediates nor features_only).')
    return [info[i]['module'] for i in range(len(info))]


def default_layers(count: int, layers: int = DEFAULT_LAYER_COUNT) -> List[int]:
    """`layers` indices spread evenly over a feature list of `count` entries, first and last included."""
    return sorted({int(i) for i in np.linspace(0, count - 1, min(layers, count)).round()})


def resolve_layers(model: nn.Module, layers: Optional[Sequence[int]] = None, name: Optional[str] = None) -> List[int]:
    """Indices into the model's feature list, ascending and without repeats (negative ones count from the end);
    a few spread over depth when none are given. ValueError naming the model's range for one it does not have."""
    modules = feature_modules(model)
    count = len(modules)
    if layers is None:
        return default_layers(count)
    resolved = set()
    for layer in layers:
        index = layer + count if layer < 0 else layer
        if not 0 <= index < count:
            raise ValueError(
                f'{name or type(model).__name__} has no layer {layer}: it has {plural(count, "feature layer")}, 0 '
                f'to {count - 1} ({modules[0]} to {modules[-1]}), or -{count} to -1 counted from the end.')
        resolved.add(index)
    return sorted(resolved)


def _hooked_outputs(model: nn.Module, x: torch.Tensor, modules: Sequence[str]) -> List[torch.Tensor]:
    """Outputs of the named modules in one forward pass (what timm's hook-based features_only returns)."""
    outputs = {}
    handles = []
    try:
        for module in modules:
            def keep(_module, _inputs, output, module=module):
                outputs[module] = output[0] if isinstance(output, (tuple, list)) else output
            try:
                target = model.get_submodule(module)
            except AttributeError as e:
                raise ValueError(f'{type(model).__name__} has no module {module!r}, which its feature_info '
                                 f'names.') from e
            handles.append(target.register_forward_hook(keep))
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [outputs[module] for module in modules]


def extract_maps(model: nn.Module, x: torch.Tensor, layers: Sequence[int]) -> List[torch.Tensor]:
    """The feature maps (B, C, H, W) of a batch at the given layers (ascending indices into the feature list), from
    timm's `forward_intermediates`, or the feature_info modules' outputs for a model without it."""
    modules = feature_modules(model)
    if callable(getattr(model, 'forward_intermediates', None)):
        maps = model.forward_intermediates(x, indices=list(layers), output_fmt='NCHW', intermediates_only=True)
    else:
        maps = _hooked_outputs(model, x, [modules[i] for i in layers])
    for index, fmap in zip(layers, maps):
        if fmap.ndim != 4:
            raise ValueError(f'Layer {index} ({modules[index]}) of {type(model).__name__} gives a '
                             f'{tuple(fmap.shape)} tensor, not (batch, channels, height, width) maps.')
    return list(maps)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled on its own to [0, 1], its minimum to 0 and its maximum to 1, as matplotlib's `imshow` shows
    it in the paper's visualization code; a constant map becomes 0."""
    flat = maps.float().flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    scaled = torch.where(high > low, (flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny), 0.)
    return scaled.reshape(maps.shape)


def channel_ratios(maps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each image and channel (B, C) of a batch of one layer's maps (B, C, H, W): its spread (standard deviation
    over the map) relative to the median channel's (0 for a constant map where the median is 0 too), and its peak
    (largest absolute value) relative to the median of the non-flat channels' peaks (NaN when all are flat)."""
    values = maps.float().flatten(2)
    spread = values.std(dim=2, correction=0)
    peak = values.abs().amax(dim=2)
    spread_ratio = (spread / spread.median(dim=1, keepdim=True).values).nan_to_num(nan=0., posinf=torch.inf)
    typical_peak = torch.where(spread_ratio <= FLAT_SPREAD, torch.nan, peak).nanmedian(dim=1, keepdim=True).values
    return spread_ratio, peak / typical_peak


def _flat_and_outlying(spread_ratio: torch.Tensor, peak_ratio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    flat = spread_ratio <= FLAT_SPREAD
    return flat, ~flat & (peak_ratio > OUTLYING_PEAK)


def invalid_channels(maps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The flat and the outlying channels, (B, C) masks, of a batch of one layer's maps (B, C, H, W): see the
    module's definitions (FLAT_SPREAD, OUTLYING_PEAK)."""
    return _flat_and_outlying(*channel_ratios(maps))


@dataclasses.dataclass
class LayerReport:
    """One layer's channels over a set of images: the share of invalid ones and how rich they are."""
    index: int
    module: str
    channels: int
    height: int
    width: int
    images: int
    positions: int  # images x height x width: the effective rank is at most this less one
    flat_fraction: float  # of all (image, channel) maps
    outlying_fraction: float
    invalid_fraction: float  # flat or outlying
    min_spread_ratio: float  # the smallest spread relative to the layer's median (flat: at most FLAT_SPREAD)
    max_peak_ratio: Optional[float]  # the largest non-flat peak relative to the median (outlying: above OUTLYING_PEAK)
    effective_rank: float  # 1 to `channels` (0: every channel constant)
    relative_rank: float  # effective_rank / channels


class LayerStatistics:
    """Accumulates one layer's maps batch by batch: invalid channel counts, and the channels' mean and centred
    products (in float64, batches merged as Chan et al.'s parallel variance), from which their covariance, and so
    the effective rank, follows."""

    def __init__(self) -> None:
        self.images = self.maps = self.flat = self.outlying = self.positions = 0
        self.min_spread_ratio = math.inf
        self.max_peak_ratio: Optional[float] = None
        self.shape: Optional[Tuple[int, int, int]] = None
        self.mean: Optional[torch.Tensor] = None
        self.products: Optional[torch.Tensor] = None

    def update(self, maps: torch.Tensor) -> None:
        spread_ratio, peak_ratio = channel_ratios(maps)
        flat, outlying = _flat_and_outlying(spread_ratio, peak_ratio)
        self.images += maps.shape[0]
        self.maps += flat.numel()
        self.flat += int(flat.sum())
        self.outlying += int(outlying.sum())
        self.min_spread_ratio = min(self.min_spread_ratio, float(spread_ratio.min()))
        live_peaks = peak_ratio[~flat & ~peak_ratio.isnan()]
        if len(live_peaks):
            largest = float(live_peaks.max())
            self.max_peak_ratio = largest if self.max_peak_ratio is None else max(self.max_peak_ratio, largest)
        self.shape = tuple(maps.shape[1:])
        positions = maps.detach().permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).double()
        count, mean = positions.shape[0], positions.mean(0)
        centred = positions - mean
        products = centred.T @ centred
        if self.mean is None:
            self.mean, self.products = mean, products
        else:
            total = self.positions + count
            delta = mean - self.mean
            self.products += products + torch.outer(delta, delta) * (self.positions * count / total)
            self.mean += delta * (count / total)
        self.positions += count

    def effective_rank(self) -> float:
        """exp(entropy) of the normalized singular values of the centred (positions x channels) matrix; 0 when
        every channel is constant."""
        if self.products is None:
            raise ValueError('No maps were measured.')
        eigenvalues = torch.linalg.eigvalsh(self.products)
        tolerance = eigenvalues.max() * len(eigenvalues) * torch.finfo(eigenvalues.dtype).eps  # round-off, not rank
        singular = eigenvalues[eigenvalues > tolerance].sqrt()
        if not len(singular):
            return 0.
        p = singular / singular.sum()
        return float(torch.exp(-(p * p.log()).sum()))

    def report(self, index: int, module: str) -> LayerReport:
        channels, height, width = self.shape
        rank = self.effective_rank()
        return LayerReport(
            index=index, module=module, channels=channels, height=height, width=width, images=self.images,
            positions=self.positions, flat_fraction=self.flat / self.maps, outlying_fraction=self.outlying / self.maps,
            invalid_fraction=(self.flat + self.outlying) / self.maps, min_spread_ratio=self.min_spread_ratio,
            max_peak_ratio=self.max_peak_ratio, effective_rank=rank, relative_rank=rank / channels)


def effective_rank(maps: torch.Tensor) -> float:
    """The effective rank of the channels of maps (B, C, H, W) over all their positions (see LayerStatistics)."""
    statistics = LayerStatistics()
    statistics.update(maps)
    return statistics.effective_rank()


def measure_features(model: nn.Module, batches: Iterable[torch.Tensor], layers: Sequence[int]) -> List[LayerReport]:
    """Invalid channels and effective rank at each layer (ascending indices into the feature list) over every
    image of `batches`, preprocessed as the model takes them."""
    modules = feature_modules(model)
    statistics = [LayerStatistics() for _ in layers]
    with torch.inference_mode():
        for x in batches:
            for layer, fmap in zip(statistics, extract_maps(model, x, layers)):
                layer.update(fmap)
    if not statistics or statistics[0].images == 0:
        raise ValueError('No images to measure.')
    return [layer.report(index, modules[index]) for index, layer in zip(layers, statistics)]


@dataclasses.dataclass
class LayerMaps:
    """One layer's maps (C, H, W) of one image, with the invalid channels (C,) marked, and a title."""
    title: str
    maps: torch.Tensor
    invalid: torch.Tensor


@dataclasses.dataclass
class Panel:
    """One model's row of the figure: the image as the model takes it (3, H, W) in [0, 1], and its layers' maps."""
    label: str
    image: torch.Tensor
    layers: List[LayerMaps]


INVALID_COLOR = (0.9, 0.05, 0.05)
VALID_COLOR = (0.8, 0.8, 0.8)
BACKGROUND = 1.


def _upscale(images: torch.Tensor, side: int, interpolation: str) -> torch.Tensor:
    """Images (C, H, W) resized, aspect kept, so that their longer side is `side`; values kept within [0, 1]."""
    scale = side / max(images.shape[-2:])
    size = [max(1, round(images.shape[-2] * scale)), max(1, round(images.shape[-1] * scale))]
    align = {} if interpolation == 'nearest' else dict(align_corners=False)
    return F.interpolate(images[None].float(), size=size, mode=interpolation, **align)[0].clamp(0, 1)


def map_grid(layer: LayerMaps, channels: int, size: int, interpolation: str = 'bilinear') -> np.ndarray:
    """A (size, size, 3) image of the first `channels` maps in a square grid, each scaled to [0, 1] on its own
    (`normalize_maps`), upscaled to its cell with `interpolation` and framed: red when invalid, gray otherwise."""
    count = min(channels, layer.maps.shape[0])
    columns = math.ceil(math.sqrt(count))
    cell = size // columns
    frame = max(2, cell // 24)
    maps = _upscale(normalize_maps(layer.maps[:count]), cell - 2 * frame, interpolation).numpy()
    height, width = maps.shape[-2:]
    grid = np.full((size, size, 3), BACKGROUND, dtype=np.float32)
    for channel in range(count):
        top, left = (channel // columns) * cell, (channel % columns) * cell
        color = INVALID_COLOR if bool(layer.invalid[channel]) else VALID_COLOR
        grid[top:top + height + 2 * frame, left:left + width + 2 * frame] = color
        grid[top + frame:top + frame + height, left + frame:left + frame + width] = maps[channel][..., None]
    return grid


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise RuntimeError(INSTALL_MATPLOTLIB) from e
    try:
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as e:  # installed but broken, e.g. built against another numpy
        raise RuntimeError(f'matplotlib is installed but does not import ({type(e).__name__}: {e}): reinstall it, '
                           f'e.g. pip install --force-reinstall matplotlib.') from e
    return plt


def draw_figure(
        panels: Sequence[Panel],
        path: PathLike,
        size: int = 512,
        channels: int = 16,
        interpolation: str = 'bilinear',
        title: Optional[str] = None,
) -> None:
    """Draw one row per model: the image it takes, then for each layer a `size`-pixel grid of its first `channels`
    maps (see `map_grid`), titled with the model and layer; invalid channels framed in red."""
    plt = _pyplot()
    dpi = 100
    columns = 1 + max(len(panel.layers) for panel in panels)
    inches = size / dpi
    fig, axes = plt.subplots(len(panels), columns, figsize=(columns * inches, len(panels) * (inches + 0.55)),
                             squeeze=False, dpi=dpi)
    for row, panel in zip(axes, panels):
        image = _upscale(panel.image.clamp(0, 1), size, interpolation)
        row[0].imshow(image.permute(1, 2, 0).numpy(), interpolation='none')
        row[0].set_title(panel.label, fontsize=10, fontweight='bold')
        for ax, layer in zip(row[1:], panel.layers):
            ax.imshow(map_grid(layer, channels, size, interpolation), interpolation='none')
            ax.set_title(layer.title, fontsize=8)
        for ax in row:
            ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
