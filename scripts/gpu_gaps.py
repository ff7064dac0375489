"""Where a GPU sits idle between kernels, from a torch.profiler run (session Q): the device's kernels and copies
sorted by start, the gaps between one's end and the next one's start, summed and the largest listed with their
neighbours. Used by scripts/gpu_train_profile.py (`sprintc train`'s loop) and scripts/gpu_step_gaps.py (the bench's
captured step)."""
import torch


def device_intervals(prof):
    out = []
    for e in prof.events():
        # a record_function range (Optimizer.step#AdamW.step, ProfilerStep#N) is mirrored on the device's timeline
        # over the kernels it launched: it is not a kernel, and counting it would count those kernels twice
        # (kernels named after a lambda, `...::{lambda(int)#1}`, have a "#" too: session AF found them missing)
        if (e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                and not ("#" in e.name and "(" not in e.name)):
            out.append((e.time_range.start, e.time_range.end, e.name))
    return sorted(out)


def gap_report(prof, steps: int, top: int = 12) -> list[str]:
    iv = device_intervals(prof)
    if not iv:
        return ["no device events"]
    gaps, end, prev = [], iv[0][1], iv[0][2]
    for s, e, name in iv[1:]:
        if s > end:
            gaps.append((s - end, prev, name))
        if e > end:
            end, prev = e, name
    span = (end - iv[0][0]) / 1000
    total = sum(g for g, _, _ in gaps) / 1000
    lines = [f"device span {span / steps:.2f} ms / step, idle between kernels {total / steps:.2f} ms / step "
             f"({len(gaps) / steps:.0f} gaps / step; > 20 us: {sum(g > 20 for g, _, _ in gaps) / steps:.1f} / step, "
             f"{sum(g for g, _, _ in gaps if g > 20) / 1000 / steps:.2f} ms)"]
    for g, a, b in sorted(gaps, reverse=True)[:top]:
        lines.append(f"  gap {g:9.1f} us after {a[:70]}  before {b[:70]}")
    return lines
