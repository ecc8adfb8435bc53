"""Learning-rate schedules, built from the optimizer and the run's total number of steps."""
import math

from torch.optim.lr_scheduler import LambdaLR, OneCycleLR


def one_cycle(optimizer, total_steps: int, pct_start: float = 0.25):
    # the optimizer's lr is the peak; warm up over pct_start of the run, then anneal. OneCycleLR
    # divides by zero when the warm-up is under two steps, so very short runs get a longer cycle
    total_steps = max(total_steps, math.ceil(2 / pct_start))
    return OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                      total_steps=total_steps, pct_start=pct_start)


def cosine(optimizer, total_steps: int, warmup_fraction: float = 0.05):
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return LambdaLR(optimizer, factor)
