"""Networks: the auto teacher's small ResNet and torchvision students adapted to small images."""

from __future__ import annotations

from labelfix.errors import InputError

# torchvision families that need 224 px inputs (patch embeddings of a fixed grid)
FIXED_SIZE = ("vit", "swin", "maxvit")


def build_small_resnet(in_channels: int, num_classes: int, width: int = 32):
    """A ResNet with three stages (width, 2 width, 4 width) and a 3x3 stem, for images <= 64 px.
    `model.features(x)` gives the pooled penultimate features, `model.fc` the head."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.act = nn.ReLU(inplace=True)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.act(self.b1(self.c1(x)))
            out = self.b2(self.c2(out))
            return self.act(out + (x if self.short is None else self.short(x)))

    class SmallResNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
            )
            self.layers = nn.Sequential(Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4 * w, num_classes)
            self.feature_dim = 4 * w

        def features(self, x):
            return self.pool(self.layers(self.stem(x))).flatten(1)

        def forward(self, x):
            return self.fc(self.features(x))

    return SmallResNet()


def features_and_probs(model, x):
    """L2-normalised features and probabilities of a small ResNet; the head always runs in
    float32, so bf16 features do not round the probabilities that rank the samples."""
    import torch
    import torch.nn.functional as F

    f = model.features(x).float()
    with torch.autocast(device_type=f.device.type, enabled=False):
        logits = model.fc(f)
    return F.normalize(f, dim=1), F.softmax(logits, dim=1)


def check_arch(arch: str, what: str = "--student") -> None:
    """One-line error unless torchvision has a classification model named `arch`; `what` names
    where the name came from (a flag, or a file's field)."""
    import torchvision

    if not isinstance(arch, str) or arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"{what} {arch!r}: torchvision has no classification model of that name")


def build_student(arch: str, num_classes: int, image_size: int, what: str = "--student"):
    """A random-init torchvision classifier whose stem suits `image_size`; (model, input_size, stem).

    ResNet-like stems become a 3x3 stride-1 convolution up to 64 px (and lose the max-pool
    below 24 px); fixed-grid transformers get 224 px inputs, anything else at least 32 px."""
    import torch.nn as nn
    import torchvision

    check_arch(arch, what)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    input_size, stem = image_size, "original"
    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool") and image_size <= 64:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        stem = "3x3 stride 1"
        if image_size < 24:
            model.maxpool = nn.Identity()
            stem += ", no max-pool"
    elif arch.startswith(FIXED_SIZE):
        input_size, stem = 224, "input resized to 224"
    elif image_size < 32:
        input_size, stem = 32, "input resized to 32"
    return model, input_size, stem


def features_and_logits(model, x):
    """Penultimate features (via a forward hook on the last Linear layer) and logits of any
    torchvision classifier."""
    import torch.nn as nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    box = {}
    h = last.register_forward_hook(lambda mod, inp, out: box.__setitem__("f", inp[0]))
    try:
        logits = model(x)
    finally:
        h.remove()
    return box["f"].flatten(1), logits
