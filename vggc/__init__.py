"""vggc: compress a trained VGG16 (quantize, prune, distill), export it and measure every variant."""

__version__ = "0.1.0"
