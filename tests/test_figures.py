"""Image grids are laid out by vae.figures.grid, not torchvision (whose import costs ~2 s per process): the
layout must be make_grid's, pixel for pixel, so the figures look as they always did."""

import numpy as np
import pytest
import torch
from PIL import Image

from vae.figures import grid, image_grid


@pytest.mark.parametrize("n, nrow", [(2, 8), (5, 3), (16, 8), (10, 10)])
def test_grid_is_torchvisions_make_grid(n, nrow):
    from torchvision.utils import make_grid

    images = torch.rand(n, 784, generator=torch.Generator().manual_seed(n))
    theirs = make_grid(images.reshape(-1, 1, 28, 28), nrow=nrow, padding=2, pad_value=1.0)[0].numpy()
    assert grid(images, nrow).shape == theirs.shape and np.array_equal(grid(images, nrow), theirs)


def test_a_png_grid_holds_the_8_bit_pixels_and_one_image_stays_28x28(tmp_path):
    images = torch.rand(3, 784, generator=torch.Generator().manual_seed(0))
    image_grid(images, tmp_path / "g.png", nrow=2)
    png = np.asarray(Image.open(tmp_path / "g.png"))
    assert png.shape == (2 * 30 + 2, 2 * 30 + 2) and png[0, 0] == 255  # a white gutter
    assert np.array_equal(png[2:30, 2:30], (images[0].reshape(28, 28).numpy() * 255 + 0.5).astype(np.uint8))
    image_grid(images[:1], tmp_path / "one.png", nrow=8)
    assert Image.open(tmp_path / "one.png").size == (28, 28)
