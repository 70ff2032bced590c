"""Models by any name: the zoo, torchvision:NAME, timm:NAME and the user's PATH.py:FUNCTION (docs/models.md)."""
