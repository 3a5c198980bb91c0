"""The data layer: dataset records and their importers (`records`), video decoding under a
frame and visual-token budget (`video`), the synthetic video tasks (`synthetic`) and the tiny
random models built on the spot (`tiny_model`). Imports the transport and config layers."""
