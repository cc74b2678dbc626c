"""The outside reference for scripts/bench.py: the same CIFAR ResNet (option A shortcuts) in
PyTorch eager mode, channels_last (or NCHW), SGD with momentum and weight decay. Timing only; not
product code.
"""

from __future__ import annotations


def throughput(
    depth: int = 20,
    batch_size: int = 128,
    dtype: str = "float32",
    windows: int = 5,
    steps_per_window: int = 10,
    channels_last: bool = True,
) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out, momentum=0.1, eps=1e-5)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out, momentum=0.1, eps=1e-5)
            self.stride, self.extra = stride, c_out - c_in

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            s = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
            if self.extra:
                s = F.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
            return F.relu(y + s)

    class ResNet(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            layers, c = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for i in range(n):
                    layers.append(Block(c, width, 2 if stage and not i else 1))
                    c = width
            self.blocks = nn.Sequential(*layers)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = ResNet((depth - 2) // 6).to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch_size,))
    autocast = dtype == "bfloat16"

    def step():
        x = (images.float() - 127.5) / 64.0
        x = x.contiguous(memory_format=layout)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    from resnet_train.runtime.probe import timed_windows  # the same timing windows as our rows

    result = timed_windows(step, batch_size, warmup=3, windows=windows, steps_per_window=steps_per_window)
    return {**result, "torch": torch.__version__, "threads": torch.get_num_threads()}
