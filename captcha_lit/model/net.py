"""The report's ResNet: a 3x3 stem, four stages of two basic blocks, global pooling, one
linear head per character; or, with head="ctc", one prediction per column of the feature map."""
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) images as the network takes them: pixels in [0, 1], then per channel
    (x - mean) / std. Training and every reader scale with this one function."""
    return (images.float() / 255 - mean) / std


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:  # 1x1 projection only where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """Maps (B, 3, H, W) float images to logits: (B, length, num_classes) for the per-position
    heads, (B, W / 8, num_classes + 1) for head="ctc" (class 0 is the blank)."""

    def __init__(self, length: int, num_classes: int, widths=(36, 72, 144, 288), strides=(1, 2, 2, 2),
                 blocks_per_stage: int = 2, columns: int = 0, head: str = "positions"):
        super().__init__()
        self.length, self.num_classes, self.head = length, num_classes, head
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c_in = [], widths[0]
        for c_out, stride in zip(widths, strides):
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        if head == "ctc":  # features averaged over the height: one vector per column, left to right
            self.heads = nn.Linear(c_in, num_classes + 1)
            return
        # columns=0: the report's global average pool. columns>0: pool the height only, down to that
        # many columns, so the heads see where features are (left to right) and learn positions faster
        self.pool = nn.AdaptiveAvgPool2d((1, columns) if columns else 1)  # adaptive: any input size works
        # `length` heads of features -> num_classes, fused into one Linear (same parameters, one matmul)
        self.heads = nn.Linear(c_in * max(1, columns), length * num_classes)

    def forward(self, x):
        if self.head == "ctc":
            return self.heads(self.blocks(self.stem(x)).mean(2).transpose(1, 2))
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.heads(x).view(-1, self.length, self.num_classes)


def fold_batchnorm(net: ResNet) -> ResNet:
    """For inference (eval mode only): each BatchNorm folded into the convolution before it, which
    gains a bias. The same function with fewer layers to run."""
    net.stem = nn.Sequential(fuse_conv_bn_eval(net.stem[0], net.stem[1]), net.stem[2])
    for block in net.blocks:
        block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
        block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
        if isinstance(block.shortcut, nn.Sequential):
            block.shortcut = fuse_conv_bn_eval(block.shortcut[0], block.shortcut[1])
    return net
